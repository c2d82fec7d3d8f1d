//! A ping that runs while a test does something to the cluster (an upgrade, a
//! kill, a fault), and tells afterwards which echoes came back and when.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, ensure};

use crate::netns::netns_path;

/// `ping -D -n -i INTERVAL -W 1 DST` from inside a namespace, until stopped.
pub struct Pinger {
    child: Option<Child>,
    reader: Option<JoinHandle<()>>,
    lines: Arc<Mutex<Vec<String>>>,
    interval: Duration,
}

/// What a [`Pinger`] saw: each reply's sequence number and arrival (Unix
/// seconds, as ping stamps it), and how many echoes were sent.
#[derive(Debug)]
pub struct PingLog {
    pub transmitted: u64,
    pub replies: Vec<(u64, f64)>,
    pub interval: Duration,
}

impl Pinger {
    pub fn start(ns: &str, dst: &str, interval: Duration) -> Result<Pinger> {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", netns_path(ns).display()))
            .args(["ping", "-D", "-n", "-W", "1", "-i"])
            .arg(format!("{:.3}", interval.as_secs_f64()))
            .arg(dst)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("running ping")?;
        let stdout = child.stdout.take().expect("piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("not poisoned").push(line);
            }
        });
        Ok(Pinger {
            child: Some(child),
            reader: Some(reader),
            lines,
            interval,
        })
    }

    /// Whether a reply has come back since `since`.
    pub fn replied_since(&self, since: SystemTime) -> bool {
        let t = unix(since);
        let lines = self.lines.lock().expect("not poisoned");
        lines
            .iter()
            .rev()
            .filter_map(|l| parse_reply(l))
            .any(|(_, at)| at >= t)
    }

    /// Stops ping (SIGINT, so it prints its summary) and reads the log.
    pub fn stop(mut self) -> Result<PingLog> {
        let child = self.child.take().expect("running");
        // SAFETY: kill with a pid of our own child has no memory effects.
        unsafe { libc::kill(child.id().cast_signed(), libc::SIGINT) };
        child.wait_with_output().context("waiting for ping")?;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let lines = self.lines.lock().expect("not poisoned");
        let transmitted = lines
            .iter()
            .find_map(|l| l.split(" packets transmitted").next()?.trim().parse().ok())
            .context("ping printed no summary")?;
        let replies: Vec<(u64, f64)> = lines.iter().filter_map(|l| parse_reply(l)).collect();
        ensure!(transmitted > 0, "ping sent nothing");
        Ok(PingLog {
            transmitted,
            replies,
            interval: self.interval,
        })
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// "[1732989000.123456] 64 bytes from 10.0.0.4: icmp_seq=5 ttl=64 time=0.1 ms"
fn parse_reply(line: &str) -> Option<(u64, f64)> {
    let at = line.strip_prefix('[')?.split(']').next()?.parse().ok()?;
    let seq = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("icmp_seq="))?
        .parse()
        .ok()?;
    line.contains("bytes from").then_some((seq, at))
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl PingLog {
    /// Echoes up to the last one answered that got no reply (duplicates counted
    /// once). The echoes after it were still in flight when ping was stopped;
    /// tests stop it after a quiet spell, so a loss there is one they see as no
    /// replies at all.
    pub fn lost(&self) -> u64 {
        let mut seqs: Vec<u64> = self.replies.iter().map(|(s, _)| *s).collect();
        seqs.sort_unstable();
        seqs.dedup();
        // icmp_seq counts from 1.
        seqs.last()
            .map_or(self.transmitted, |&last| last - seqs.len() as u64)
    }

    /// The echoes up to the last one answered that got no reply, each with
    /// about when it was sent (Unix seconds; from the first reply and the
    /// interval): to tell which event lost them.
    pub fn lost_echoes(&self) -> Vec<(u64, f64)> {
        let Some(&(first_seq, first_at)) = self.replies.iter().min_by_key(|(s, _)| *s) else {
            return Vec::new();
        };
        let answered: std::collections::BTreeSet<u64> =
            self.replies.iter().map(|(s, _)| *s).collect();
        let last = answered.last().copied().unwrap_or(0);
        let step = self.interval.as_secs_f64();
        (1..=last)
            .filter(|s| !answered.contains(s))
            .map(|s| (s, first_at + (s as f64 - first_seq as f64) * step))
            .collect()
    }

    /// Silences longer than `min` between two replies: (last reply before,
    /// first reply after), Unix seconds.
    pub fn gaps(&self, min: Duration) -> Vec<(f64, f64)> {
        let mut at: Vec<f64> = self.replies.iter().map(|(_, t)| *t).collect();
        at.sort_by(f64::total_cmp);
        at.windows(2)
            .filter(|w| w[1] - w[0] > min.as_secs_f64())
            .map(|w| (w[0], w[1]))
            .collect()
    }

    /// How long after `t` the first reply came.
    pub fn first_reply_after(&self, t: SystemTime) -> Option<Duration> {
        let t = unix(t);
        self.replies
            .iter()
            .map(|(_, at)| *at)
            .filter(|at| *at >= t)
            .reduce(f64::min)
            .map(|at| Duration::from_secs_f64(at - t))
    }

    /// Replies whose arrival falls inside [from, to).
    pub fn replies_between(&self, from: SystemTime, to: SystemTime) -> usize {
        let (from, to) = (unix(from), unix(to));
        self.replies
            .iter()
            .filter(|(_, at)| *at >= from && *at < to)
            .count()
    }
}
