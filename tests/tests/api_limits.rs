//! The local API's request limits against a running agent: a request line
//! over the limit is refused saying the limit; a request that has not arrived
//! whole by the deadline is refused, while other clients are answered
//! meanwhile; a monitor's connection outlives the deadline and still gets its
//! drops.

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _},
    net::Ipv4Addr,
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use overlay_tests::{
    Decap, Overlay, inject,
    prog_run::{eth, ipv4_udp},
    scenario::{C1, C2},
};
use overlay_userspace::{
    api::{
        MAX_REQUEST, REQUEST_DEADLINE,
        proto::{ErrorCode, Incoming, Request, Response, StreamRequest},
    },
    model::Mac,
    monitor::record::Filter,
};

/// Node1 running, c1 on it (c2 a static remote).
fn node1() -> Result<Overlay> {
    let mut o = Overlay::build_with(Decap::Tc, &[C1, C2])?;
    o.start_agent(1)?;
    Ok(o)
}

fn connect(socket: &Path) -> Result<UnixStream> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    // Far past the deadline: a read that waits this long means no answer.
    stream.set_read_timeout(Some(REQUEST_DEADLINE * 6))?;
    Ok(stream)
}

/// The agent's next line on `stream`, parsed.
fn answer(stream: &UnixStream) -> Result<Response> {
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .context("reading the agent's answer")?;
    serde_json::from_str(&line).with_context(|| format!("the answer {line:?}"))
}

fn members(socket: &Path) -> Result<Response> {
    let mut stream = connect(socket)?;
    let mut line = Incoming::Call(Request::Members).encode()?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    answer(&stream)
}

fn refused(response: &Response, text: &str) -> Result<()> {
    ensure!(
        response.code == Some(ErrorCode::Invalid)
            && response.error.as_deref().is_some_and(|e| e.contains(text)),
        "expected an invalid request saying {text:?}: {response:?}"
    );
    Ok(())
}

/// Whether the agent has sent nothing on `stream` and not closed it.
fn nothing_yet(stream: &UnixStream) -> Result<bool> {
    stream.set_nonblocking(true)?;
    let mut byte = [0u8; 1];
    let quiet = matches!((&*stream).read(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
    stream.set_nonblocking(false)?;
    Ok(quiet)
}

/// Whether the agent has closed `stream` (after its answer). A client still
/// sending when the agent closed sees a reset rather than the end: the agent
/// closed with the client's bytes unread, and the kernel says so.
fn closed(stream: &UnixStream) -> Result<bool> {
    let mut byte = [0u8; 1];
    match (&*stream).read(&mut byte) {
        Ok(n) => Ok(n == 0),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(true),
        Err(e) => Err(e.into()),
    }
}

#[test]
fn an_oversized_request_is_refused_saying_the_limit() -> Result<()> {
    let o = node1()?;
    let socket = o.scenario.names.socket(1);
    let mut stream = connect(&socket)?;
    let padding = "x".repeat(MAX_REQUEST);
    let line = format!("{{\"op\":\"members\",\"padding\":\"{padding}\"}}\n");
    // The agent stops reading at the limit and closes after its answer: the
    // rest of the write may fail (EPIPE), the answer is there to read.
    let _ = stream.write_all(line.as_bytes());
    refused(
        &answer(&stream)?,
        &format!("longer than {MAX_REQUEST} bytes"),
    )?;
    // A request at the limit is read whole: refused for what it says, not
    // for its length.
    let mut stream = connect(&socket)?;
    let op = "y".repeat(MAX_REQUEST - r#"{"op":""}"#.len());
    let at_limit = format!("{{\"op\":\"{op}\"}}");
    ensure!(at_limit.len() == MAX_REQUEST);
    stream.write_all(format!("{at_limit}\n").as_bytes())?;
    refused(&answer(&stream)?, "not a valid request: unknown variant")?;
    ensure!(members(&socket)?.error.is_none(), "the agent answers on");
    Ok(())
}

#[test]
fn a_slow_client_is_cut_off_at_the_deadline_without_holding_up_others() -> Result<()> {
    let o = node1()?;
    let socket = o.scenario.names.socket(1);
    let started = Instant::now();
    // Half a request and never the rest; and a client that sends nothing.
    let mut half = connect(&socket)?;
    half.write_all(br#"{"op":"mem"#)?;
    let silent = connect(&socket)?;
    // One that keeps sending, a byte every half second, whole only after the
    // deadline: the deadline is for the whole line, not between bytes.
    let trickle = connect(&socket)?;
    let mut writer = trickle.try_clone()?;
    let sender = std::thread::spawn(move || {
        let line = b"{\"op\":\"members\",\"padding\":\"abcdefghij\"}\n";
        for byte in line {
            if writer.write_all(&[*byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });

    // Meanwhile another client is answered, while the slow ones wait.
    let asked = Instant::now();
    let answered = members(&socket)?;
    let took = asked.elapsed();
    ensure!(answered.error.is_none(), "{answered:?}");
    for (name, stream) in [("half", &half), ("silent", &silent), ("trickle", &trickle)] {
        ensure!(
            nothing_yet(stream)?,
            "the {name} client was answered before the other one was"
        );
    }
    println!("a request beside three slow clients answered in {took:?}");

    for (name, stream) in [("half", &half), ("silent", &silent), ("trickle", &trickle)] {
        let response = answer(stream).with_context(|| format!("the {name} client"))?;
        let waited = started.elapsed();
        refused(
            &response,
            &format!("did not arrive within {REQUEST_DEADLINE:?}"),
        )?;
        ensure!(
            waited >= REQUEST_DEADLINE,
            "the {name} client was cut off after {waited:?}, before the deadline"
        );
        ensure!(closed(stream)?, "the {name} client's connection stays open");
        println!("the {name} client refused after {waited:?}");
    }
    let _ = sender.join();
    Ok(())
}

#[test]
fn a_monitor_outlives_the_request_deadline() -> Result<()> {
    let o = node1()?;
    let socket = o.scenario.names.socket(1);
    let mut monitor = connect(&socket)?;
    let request = Incoming::Stream(StreamRequest::Monitor {
        filter: Filter {
            reasons: vec!["drop_spoofed_ip".into()],
            ..Filter::default()
        },
    });
    let mut line = request.encode()?;
    line.push('\n');
    monitor.write_all(line.as_bytes())?;
    let mut lines = BufReader::new(monitor.try_clone()?);
    let mut first = String::new();
    lines.read_line(&mut first)?;
    ensure!(first.contains("listening"), "the monitor's answer: {first}");

    std::thread::sleep(REQUEST_DEADLINE + Duration::from_secs(1));
    ensure!(
        nothing_yet(&monitor)?,
        "the monitor was cut off or sent something unasked"
    );
    // c1 sends from an address not its own: the drop reaches the monitor.
    let spoofed = Ipv4Addr::new(10, 0, 0, 66);
    let frame = eth(
        Mac::from_ipv4(C2.ip).0,
        Mac::from_ipv4(C1.ip).0,
        0x0800,
        &ipv4_udp(spoofed, C2.ip, 40000, 7777, b"after the deadline"),
    );
    inject(&o.ns(C1), "eth0", vec![frame])?;
    let mut event = String::new();
    lines.read_line(&mut event)?;
    let event: serde_json::Value =
        serde_json::from_str(&event).with_context(|| format!("the monitor's line {event:?}"))?;
    ensure!(
        event["reason"] == "drop_spoofed_ip" && event["inner"]["src_ip"] == spoofed.to_string(),
        "{event}"
    );
    Ok(())
}
