//! The chart a reader sees before the numbers: per wire and topology, each case's
//! median as a ratio to routed (no overlay) there, with the rounds' spread as
//! whiskers.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::{
    cases::{Kind, Net},
    report::Summary,
};

const GROUPS: [(&str, &str); 4] = [
    ("tcp1_gbps", "TCP 1 stream"),
    ("tcp4_gbps", "TCP 4 streams"),
    ("rr_tps", "TCP RR trans/s"),
    ("udp64_kpps", "UDP 64 B pps"),
];

fn color(kind: Kind) -> RGBColor {
    match kind {
        Kind::Routed => RGBColor(150, 150, 150),
        Kind::KernelVxlan => RGBColor(214, 96, 77),
        Kind::EbpfTc => RGBColor(67, 147, 195),
        Kind::EbpfXdp => RGBColor(33, 102, 172),
        Kind::DockerSwarm => RGBColor(244, 165, 130),
    }
}

pub fn draw(summary: &Summary, path: &Path) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let nets: Vec<Net> = summary
        .nets()
        .into_iter()
        // Ratios need the routed case there (a quick run has it on one wire only).
        .filter(|n| {
            summary
                .cases
                .iter()
                .any(|c| c.spec.net == *n && c.spec.kind == Kind::Routed)
        })
        .collect();
    // Two panels a row.
    let columns = nets.len().clamp(1, 2);
    let rows = nets.len().div_ceil(2).max(1);
    let root =
        SVGBackend::new(path, (560 * columns as u32, 36 + 400 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (title, body) = root.split_vertically(36);
    title
        .draw_text(
            &format!(
                "Ratio to routed (no overlay), medians of {} interleaved rounds — {}",
                summary.rounds, summary.date
            ),
            &("sans-serif", 16).into_text_style(&title),
            (10, 10),
        )
        .map_err(|e| err(&e))?;
    let panels = body.split_evenly((rows, columns));
    for (panel, net) in panels.iter().zip(nets) {
        let cases: Vec<_> = summary.cases.iter().filter(|c| c.spec.net == net).collect();
        let ratios: Vec<Vec<(f64, f64, f64)>> = cases
            .iter()
            .map(|c| {
                GROUPS
                    .iter()
                    .map(|(m, _)| {
                        let base = summary
                            .cases
                            .iter()
                            .find(|b| {
                                b.spec.kind == Kind::Routed && b.spec.net == net && !b.spec.baseline
                            })
                            .and_then(|b| b.stats.get(m))
                            .map_or(f64::NAN, |s| s.median);
                        let s = c.stats.get(m).copied();
                        s.map_or((0.0, 0.0, 0.0), |s| {
                            (s.median / base, s.min / base, s.max / base)
                        })
                    })
                    .collect()
            })
            .collect();
        let ymax = ratios
            .iter()
            .flatten()
            .map(|r| r.2)
            .filter(|v| v.is_finite())
            .fold(1.2f64, f64::max)
            * 1.1;
        let caption = net.caption();
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 14))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..GROUPS.len() as f64, 0f64..ymax)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(GROUPS.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let g = x.floor();
                if (x - g - 0.5).abs() < 0.01 && (g as usize) < GROUPS.len() {
                    GROUPS[g as usize].1.to_owned()
                } else {
                    String::new()
                }
            })
            .y_desc("× routed")
            .y_label_formatter(&|y| format!("{y:.1}"))
            .draw()
            .map_err(|e| err(&e))?;
        let n = cases.len() as f64;
        let width = 0.8 / n;
        for (i, (case, r)) in cases.iter().zip(&ratios).enumerate() {
            let c = color(case.spec.kind);
            let c = if case.spec.baseline {
                RGBColor(c.0 / 2 + 110, c.1 / 2 + 110, c.2 / 2 + 110)
            } else {
                c
            };
            let x0 = |g: usize| g as f64 + 0.1 + width * i as f64;
            chart
                .draw_series(r.iter().enumerate().map(|(g, (med, _, _))| {
                    Rectangle::new([(x0(g), 0.0), (x0(g) + width * 0.9, *med)], c.filled())
                }))
                .map_err(|e| err(&e))?
                .label(if case.spec.baseline {
                    format!("{} (baseline)", case.spec.kind.name())
                } else {
                    case.spec.kind.name().to_owned()
                })
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
            chart
                .draw_series(r.iter().enumerate().map(|(g, (_, lo, hi))| {
                    let x = x0(g) + width * 0.45;
                    PathElement::new(vec![(x, *lo), (x, *hi)], BLACK.stroke_width(1))
                }))
                .map_err(|e| err(&e))?;
        }
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(0.0, 1.0), (GROUPS.len() as f64, 1.0)],
                BLACK.mix(0.6).stroke_width(1),
            )))
            .map_err(|e| err(&e))?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 12))
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
