//! Accepts policy connections and serves each on its own task.
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::event::Event;
use crate::policy::bans::BanView;
use crate::policy::listen::{Listener, Stream};

use super::protocol::{Read, Request, Verdict, read_request};
use super::transaction::{EndOfDataSeen, Tracker};
use super::{BannedAction, PolicyMetrics, PostfixPolicyConfig};

/// A connection with no request for this long is closed. Postfix closes its own idle policy
/// connections after `smtpd_policy_service_max_idle` (300 s) and reconnects when it needs to.
const IDLE: Duration = Duration::from_secs(900);

/// State every connection of one service shares.
pub struct Shared {
    bans: Arc<BanView>,
    banned_action: BannedAction,
    metrics: PolicyMetrics,
    events: mpsc::Sender<Event>,
    eod: EndOfDataSeen,
    slots: Arc<Semaphore>,
}

impl Shared {
    pub fn new(
        config: &PostfixPolicyConfig,
        bans: Arc<BanView>,
        metrics: PolicyMetrics,
        events: mpsc::Sender<Event>,
    ) -> Self {
        Shared {
            bans,
            banned_action: config.banned_action,
            metrics,
            events,
            eod: EndOfDataSeen::default(),
            slots: Arc::new(Semaphore::new(config.max_connections)),
        }
    }

    /// The answer to one request: `DUNNO` unless the client is banned, XDP is not there to
    /// drop it, and the configuration asks for more.
    fn answer(&self, req: &Request) -> Verdict {
        if self.banned_action == BannedAction::Dunno
            || req.request.as_deref() != Some("smtpd_access_policy")
            || self.bans.xdp_attached()
        {
            return Verdict::Dunno;
        }
        let ip = req
            .client_address
            .as_deref()
            .and_then(|a| a.parse::<IpAddr>().ok());
        match ip {
            Some(ip) if self.bans.is_banned(ip, Utc::now()) => self.banned_action.verdict(),
            _ => Verdict::Dunno,
        }
    }

    /// Hands `events` to the daemon without waiting: a full channel drops them (counted).
    fn send(&self, events: &mut Vec<Event>) {
        for ev in events.drain(..) {
            if self.events.try_send(ev).is_err() {
                self.metrics.events_dropped.inc();
            }
        }
    }
}

/// Serves `listener` until `cancel` fires.
pub async fn serve(listener: Listener, shared: Arc<Shared>, cancel: CancellationToken) {
    let addr = listener.local_addr();
    tracing::info!(%addr, "Postfix policy service listening");
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and the like: wait a little instead of spinning.
                    tracing::warn!(%addr, error = %e, "Postfix policy accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&shared.slots).try_acquire_owned() else {
            shared.metrics.refused.inc();
            drop(stream);
            continue;
        };
        let shared = Arc::clone(&shared);
        let cancel = cancel.clone();
        tokio::spawn(async move {
            shared.metrics.connections.inc();
            connection(stream, &shared, &cancel).await;
            shared.metrics.connections.dec();
            drop(slot);
        });
    }
}

/// One smtpd process's connection: requests in, one reply each, until it closes.
async fn connection(stream: Stream, shared: &Shared, cancel: &CancellationToken) {
    let mut reader = BufReader::with_capacity(8192, stream);
    let mut line = Vec::with_capacity(256);
    let mut tracker = Tracker::default();
    let mut events = Vec::new();
    loop {
        let read = tokio::select! {
            _ = cancel.cancelled() => break,
            r = tokio::time::timeout(IDLE, read_request(&mut reader, &mut line)) => r,
        };
        let read = match read {
            Ok(Ok(read)) => read,
            // An I/O error or an idle peer: the connection is over.
            Ok(Err(_)) | Err(_) => break,
        };
        let started = Instant::now();
        let verdict = match &read {
            Read::Request(req) => std::panic::catch_unwind(AssertUnwindSafe(|| shared.answer(req)))
                .unwrap_or(Verdict::Dunno),
            Read::Malformed(why) => {
                shared.metrics.malformed.inc();
                tracing::debug!(why, "malformed Postfix policy request; answered DUNNO");
                Verdict::Dunno
            }
            Read::Closed => break,
            Read::TooLarge => {
                shared.metrics.malformed.inc();
                tracing::warn!(
                    "Postfix policy request over the size bound; closing the connection"
                );
                break;
            }
        };
        if reader.get_mut().write_all(verdict.reply()).await.is_err() {
            break;
        }
        shared.metrics.answered(verdict, started.elapsed());
        if let Read::Request(req) = &read {
            let now = Utc::now();
            let tracked = std::panic::catch_unwind(AssertUnwindSafe(|| {
                tracker.request(req, now, &shared.eod, &mut events)
            }));
            if tracked.is_err() {
                events.clear();
                tracker = Tracker::default();
            }
            shared.send(&mut events);
        }
    }
    tracker.close(&shared.eod, &mut events);
    shared.send(&mut events);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use crate::metrics::VerdictLabel;
    use crate::policy::listen::{ListenAddr, UnixSocketOptions};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    struct Running {
        addr: ListenAddr,
        bans: Arc<BanView>,
        events: mpsc::Receiver<Event>,
        metrics: PolicyMetrics,
        cancel: CancellationToken,
    }

    async fn start(config: PostfixPolicyConfig, channel: usize) -> Running {
        let listener = ListenAddr::parse("t", "127.0.0.1:0")
            .unwrap()
            .bind(&UnixSocketOptions::default())
            .await
            .unwrap();
        let addr = listener.local_addr();
        let bans = Arc::new(BanView::default());
        let metrics = PolicyMetrics::default();
        let (tx, events) = mpsc::channel(channel);
        let shared = Arc::new(Shared::new(&config, Arc::clone(&bans), metrics.clone(), tx));
        let cancel = CancellationToken::new();
        tokio::spawn(serve(listener, shared, cancel.clone()));
        Running {
            addr,
            bans,
            events,
            metrics,
            cancel,
        }
    }

    /// Guards against a hang (a broken server that never answers): the test fails instead.
    async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .expect("no answer within 30 s")
    }

    async fn next(events: &mut mpsc::Receiver<Event>) -> Event {
        within(events.recv()).await.expect("event channel closed")
    }

    struct Client(BufReader<tokio::net::TcpStream>);

    impl Client {
        async fn connect(addr: &ListenAddr) -> Client {
            let ListenAddr::Tcp(a) = addr else { panic!() };
            Client(BufReader::new(
                tokio::net::TcpStream::connect(a).await.unwrap(),
            ))
        }

        /// Sends raw bytes and reads one reply (up to its empty line).
        async fn ask(&mut self, request: &[u8]) -> String {
            self.0.get_mut().write_all(request).await.unwrap();
            let mut reply = String::new();
            loop {
                let mut l = String::new();
                let n = within(self.0.read_line(&mut l)).await.unwrap();
                assert!(n > 0, "closed after {reply:?}");
                reply.push_str(&l);
                if l == "\n" {
                    return reply;
                }
            }
        }
    }

    fn rcpt(ip: &str, to: &str) -> Vec<u8> {
        format!(
            "request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address={ip}\n\
             client_name=unknown\nclient_port=4000\nhelo_name=x\nsender=s@x.example\n\
             recipient={to}\ninstance=2a.1.2.0\nserver_port=25\n\n"
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn dunno_over_one_connection_with_events_and_garbage_in_between() {
        let mut s = start(PostfixPolicyConfig::default(), 64).await;
        let mut c = Client::connect(&s.addr).await;
        assert_eq!(
            c.ask(&rcpt("198.18.0.10", "A@x.test")).await,
            "action=DUNNO\n\n"
        );
        assert_eq!(
            c.ask(b"garbage without equals\n\n").await,
            "action=DUNNO\n\n"
        );
        let mut long = b"helo_name=".to_vec();
        long.extend(vec![b'h'; 10_000]);
        long.extend_from_slice(b"\n\n");
        assert_eq!(c.ask(&long).await, "action=DUNNO\n\n");
        assert_eq!(
            c.ask(&rcpt("198.18.0.10", "b@x.test")).await,
            "action=DUNNO\n\n"
        );
        let ev = next(&mut s.events).await;
        assert_eq!(ev.kind, EventKind::Rcpt);
        assert_eq!(ev.recipient.as_deref(), Some("a@x.test"));
        assert_eq!(ev.session.as_deref(), Some("pid:42"));
        assert_eq!(
            next(&mut s.events).await.recipient.as_deref(),
            Some("b@x.test")
        );
        assert_eq!(s.metrics.requests.get(), 4);
        assert_eq!(s.metrics.malformed.get(), 2);
        let dunno = VerdictLabel {
            verdict: "dunno".into(),
        };
        assert_eq!(s.metrics.answers.get_or_create(&dunno).get(), 4);
        s.cancel.cancel();
    }

    #[tokio::test]
    async fn a_banned_client_is_rejected_only_when_configured_and_xdp_is_absent() {
        let config = PostfixPolicyConfig {
            banned_action: BannedAction::Defer,
            ..PostfixPolicyConfig::default()
        };
        let s = start(config, 64).await;
        s.bans.ban(
            "198.18.0.10/32".parse().unwrap(),
            Utc::now() + chrono::Duration::hours(1),
        );
        let mut c = Client::connect(&s.addr).await;
        let reply = c.ask(&rcpt("198.18.0.10", "a@x.test")).await;
        assert_eq!(reply, "action=450 4.7.1 Try again later\n\n");
        assert_eq!(
            c.ask(&rcpt("198.18.0.11", "a@x.test")).await,
            "action=DUNNO\n\n"
        );
        s.bans.set_xdp_attached(true);
        assert_eq!(
            c.ask(&rcpt("198.18.0.10", "a@x.test")).await,
            "action=DUNNO\n\n"
        );
        s.cancel.cancel();

        let s = start(PostfixPolicyConfig::default(), 64).await;
        s.bans.ban(
            "198.18.0.10/32".parse().unwrap(),
            Utc::now() + chrono::Duration::hours(1),
        );
        let mut c = Client::connect(&s.addr).await;
        assert_eq!(
            c.ask(&rcpt("198.18.0.10", "a@x.test")).await,
            "action=DUNNO\n\n"
        );
        s.cancel.cancel();
    }

    #[tokio::test]
    async fn a_full_event_channel_never_delays_the_answer() {
        let s = start(PostfixPolicyConfig::default(), 1).await;
        let mut c = Client::connect(&s.addr).await;
        for i in 0..5 {
            let to = format!("u{i}@x.test");
            assert_eq!(c.ask(&rcpt("198.18.0.10", &to)).await, "action=DUNNO\n\n");
        }
        assert_eq!(s.metrics.events_dropped.get(), 4);
        s.cancel.cancel();
    }

    #[tokio::test]
    async fn an_oversized_request_closes_only_its_connection() {
        let mut s = start(PostfixPolicyConfig::default(), 64).await;
        let mut bad = Client::connect(&s.addr).await;
        let flood = vec![b'x'; super::super::protocol::MAX_REQUEST + 10];
        bad.0.get_mut().write_all(&flood).await.unwrap();
        let mut rest = Vec::new();
        let n = within(tokio::io::AsyncReadExt::read_to_end(&mut bad.0, &mut rest))
            .await
            .unwrap_or(0);
        assert_eq!(n, 0, "no reply, just the close");
        let mut good = Client::connect(&s.addr).await;
        assert_eq!(
            good.ask(&rcpt("198.18.0.12", "a@x.test")).await,
            "action=DUNNO\n\n"
        );
        assert_eq!(next(&mut s.events).await.ip.to_string(), "198.18.0.12");
        s.cancel.cancel();
    }
}
