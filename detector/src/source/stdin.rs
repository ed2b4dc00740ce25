//! Standard input: lines until end of file (`detector run --stdin`, replays through a pipe).
//!
//! Positions are line numbers. They identify a line in a report but cannot be resumed from:
//! a pipe cannot be re-read.
//!
//! Shutdown note: tokio reads stdin on a blocking thread. Cancellation ends this task at once,
//! but that thread stays in `read(2)` until input or EOF arrives, and dropping a runtime waits
//! for it. A daemon that reads stdin should end its runtime with `shutdown_timeout`.
use tokio::io::AsyncRead;

use super::lines::{Line, LineSplitter};
use super::{Flow, Position, SourceCtx, StatusEvent};

/// Reads `input` to its end; a last line without a newline is delivered too.
pub(super) async fn run<R: AsyncRead + Unpin>(mut input: R, max_line: usize, ctx: SourceCtx) {
    ctx.report(StatusEvent::Started {
        detail: "reading standard input".into(),
    });
    let mut splitter = LineSplitter::new(max_line, 0);
    let mut line_no = 0u64;
    let deliver = |line: Line, line_no: &mut u64| {
        *line_no += 1;
        ctx.deliver(line, Position::Stdin { line: *line_no })
    };
    loop {
        let read = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return ctx.report(StatusEvent::Stopped),
            read = splitter.read_from(&mut input) => read,
        };
        match read {
            Ok(0) => break,
            Ok(_) => {
                while let Some(line) = splitter.next_line() {
                    if deliver(line, &mut line_no).await == Flow::Stop {
                        return ctx.report(StatusEvent::Stopped);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return ctx.report(StatusEvent::Error(format!("reading standard input: {e}")));
            }
        }
    }
    if let Some(line) = splitter.finish()
        && deliver(line, &mut line_no).await == Flow::Stop
    {
        return ctx.report(StatusEvent::Stopped);
    }
    ctx.report(StatusEvent::Finished);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::source::{SourceCounters, SourceId};

    #[tokio::test]
    async fn reads_lines_until_eof_including_a_last_partial_line() {
        let (tx, mut rx) = mpsc::channel(2); // smaller than the input: exercises backpressure
        let (stx, mut srx) = mpsc::unbounded_channel();
        let ctx = SourceCtx {
            id: SourceId::stdin(),
            lines: tx,
            status: stx,
            cancel: CancellationToken::new(),
            counters: Arc::new(SourceCounters::default()),
        };
        let counters = ctx.counters.clone();
        let input: &[u8] = b"one\ntwo\n\nthree-is-long\nfour";
        let task = tokio::spawn(run(input, 8, ctx));
        let mut got = Vec::new();
        while let Some(l) = rx.recv().await {
            got.push((
                String::from_utf8(l.bytes.to_vec()).unwrap(),
                l.truncated,
                l.position,
            ));
        }
        task.await.unwrap();
        let want: Vec<_> = [
            ("one", false),
            ("two", false),
            ("", false),
            ("three-is", true),
            ("four", false),
        ]
        .iter()
        .enumerate()
        .map(|(i, (s, cut))| (s.to_string(), *cut, Position::Stdin { line: i as u64 + 1 }))
        .collect();
        assert_eq!(got, want);
        assert_eq!(counters.snapshot().lines, 5);
        assert_eq!(counters.snapshot().truncated_lines, 1);
        let mut events = Vec::new();
        while let Ok(s) = srx.try_recv() {
            events.push(s.event);
        }
        assert!(matches!(events[0], StatusEvent::Started { .. }));
        assert_eq!(events.last(), Some(&StatusEvent::Finished));
    }
}
