//! The Bolt 4.x server: a tokio listener on 127.0.0.1, one task per
//! connection, speaking the handshake, chunked framing and the Bolt 4 server
//! state machine (HELLO, RUN, PULL/DISCARD with `has_more` paging,
//! BEGIN/COMMIT/ROLLBACK, RESET, GOODBYE; IGNORED after a FAILURE until
//! RESET). Statements are answered by a [`Persona`]; the world and the
//! faults come from a shared [`ServerState`].
//!
//! ```ignore
//! let state = ServerState::shared();
//! let server = BoltServer::start(Persona::neo4j_4_4(), state.clone());
//! let graph = neo4rs::Graph::new(server.uri(), "neo4j", "secret")?;
//! server.state().inject(Fault::Slow { delay: Duration::from_secs(2) });
//! ```

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use super::packstream::{self, Struct, Value};
use super::persona::{self, Failure, Persona, RunContext};
use super::state::{ConnectionRecord, Fault, Request, ServerState, Statement, Tx, lock};

/// The handshake's first four bytes.
pub const MAGIC: [u8; 4] = [0x60, 0x60, 0xB0, 0x17];
/// The largest chunk body.
pub const MAX_CHUNK: usize = 0xFFFF;

pub const HELLO: u8 = 0x01;
pub const GOODBYE: u8 = 0x02;
pub const RESET: u8 = 0x0F;
pub const RUN: u8 = 0x10;
pub const BEGIN: u8 = 0x11;
pub const COMMIT: u8 = 0x12;
pub const ROLLBACK: u8 = 0x13;
pub const DISCARD: u8 = 0x2F;
pub const PULL: u8 = 0x3F;
pub const SUCCESS: u8 = 0x70;
pub const RECORD: u8 = 0x71;
pub const IGNORED: u8 = 0x7E;
pub const FAILURE: u8 = 0x7F;

/// A Bolt protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BoltVersion {
    pub major: u8,
    pub minor: u8,
}

impl BoltVersion {
    pub const fn new(major: u8, minor: u8) -> BoltVersion {
        BoltVersion { major, minor }
    }

    /// The handshake answer: `00 00 minor major`.
    pub fn to_bytes(self) -> [u8; 4] {
        [0, 0, self.minor, self.major]
    }
}

/// Picks the version to speak: the first client proposal (`[_, range, minor,
/// major]`, meaning `major.minor` down to `major.(minor - range)`) that
/// covers a supported version, and within it the highest supported one.
pub fn negotiate(proposals: &[[u8; 4]], supported: &[BoltVersion]) -> Option<BoltVersion> {
    proposals.iter().find_map(|&[_, range, minor, major]| {
        let lowest = minor.saturating_sub(range);
        supported
            .iter()
            .filter(|v| v.major == major && (lowest..=minor).contains(&v.minor))
            .max()
            .copied()
    })
}

/// One message as chunks: `u16` big-endian size + body, then `00 00`.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 4 + 2 * (message.len() / MAX_CHUNK));
    for chunk in message.chunks(MAX_CHUNK) {
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&[0, 0]);
    out
}

/// Reads one chunked message. Empty chunks before a message are keep-alives
/// and skipped. `Ok(None)` when the peer closed between messages.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut message = Vec::new();
    loop {
        let mut size = [0u8; 2];
        match r.read_exact(&mut size).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && message.is_empty() => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        let size = usize::from(u16::from_be_bytes(size));
        if size == 0 {
            if message.is_empty() {
                continue;
            }
            return Ok(Some(message));
        }
        let start = message.len();
        message.resize(start + size, 0);
        r.read_exact(&mut message[start..]).await?;
    }
}

/// The name of a request message tag, for the request log.
pub fn request_name(tag: u8) -> String {
    match tag {
        HELLO => "HELLO".into(),
        GOODBYE => "GOODBYE".into(),
        RESET => "RESET".into(),
        RUN => "RUN".into(),
        BEGIN => "BEGIN".into(),
        COMMIT => "COMMIT".into(),
        ROLLBACK => "ROLLBACK".into(),
        DISCARD => "DISCARD".into(),
        PULL => "PULL".into(),
        other => format!("{other:#04x}"),
    }
}

/// A running Bolt test server. Stopped by [`BoltServer::shutdown`] or on
/// drop (then connections close shortly after, asynchronously).
pub struct BoltServer {
    /// `127.0.0.1:<port>`
    pub addr: SocketAddr,
    /// The state the test shares with the server.
    pub state: Arc<Mutex<ServerState>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl BoltServer {
    /// Listens on 127.0.0.1 on a free port and serves until stopped. Must be
    /// called within a tokio runtime.
    pub fn start(persona: Persona, state: Arc<Mutex<ServerState>>) -> BoltServer {
        BoltServer::start_on(0, persona, state)
    }

    /// Like [`BoltServer::start`], on a given port of 127.0.0.1 (0: a free
    /// one), e.g. one where nothing listened a moment ago, to bring an
    /// unreachable target back. Panics when the port is taken.
    pub fn start_on(port: u16, persona: Persona, state: Arc<Mutex<ServerState>>) -> BoltServer {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port} for the Bolt test server: {e}"));
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let listener = TcpListener::from_std(listener)
            .expect("BoltServer::start must be called within a tokio runtime");
        let addr = listener.local_addr().expect("local_addr");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(
            listener,
            Arc::new(persona),
            state.clone(),
            stopped,
        ));
        BoltServer {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `bolt://127.0.0.1:<port>`
    pub fn uri(&self) -> String {
        format!("bolt://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Locks the shared state (do not hold it across an `.await` that needs
    /// the server to answer).
    pub fn state(&self) -> MutexGuard<'_, ServerState> {
        lock(&self.state)
    }

    /// Stops accepting, closes every connection and waits until done: when
    /// this returns, the port refuses connections.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for BoltServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    persona: Arc<Persona>,
    state: Arc<Mutex<ServerState>>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    next_id += 1;
                    let (persona, state) = (persona.clone(), state.clone());
                    connections.spawn(serve(socket, peer, next_id, persona, state));
                }
                // Out of file descriptors and the like: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

/// Keeps [`ServerState::active_connections`] right however a connection ends.
struct ActiveGuard(Arc<Mutex<ServerState>>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        lock(&self.0).active_connections -= 1;
    }
}

async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    id: u64,
    persona: Arc<Persona>,
    state: Arc<Mutex<ServerState>>,
) {
    {
        let mut s = lock(&state);
        s.active_connections += 1;
        s.connections.push(ConnectionRecord {
            id,
            peer,
            bolt_version: None,
            user_agent: None,
            principal: None,
            authenticated: false,
        });
    }
    let _active = ActiveGuard(state.clone());
    let _ = socket.set_nodelay(true);
    let (reader, writer) = socket.into_split();
    let mut session = Session {
        id,
        persona,
        state,
        reader: BufReader::new(reader),
        writer: BufWriter::new(writer),
        phase: Phase::AwaitHello,
        username: String::new(),
        tx: None,
        results: Vec::new(),
        next_qid: 0,
    };
    // Errors end the connection: the peer went away or spoke garbage.
    let _ = session.run().await;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitHello,
    Ready,
    Failed,
}

enum Flow {
    Continue,
    Close,
}

/// An explicit transaction (BEGIN .. COMMIT/ROLLBACK).
struct ExplicitTx {
    transaction_id: String,
    database: String,
    begin_extra: Value,
}

/// A result not yet fully pulled or discarded.
struct OpenResult {
    /// `-1` in auto-commit, 0, 1, ... within an explicit transaction.
    qid: i64,
    database: String,
    rows: VecDeque<Vec<Value>>,
    sent: usize,
    drop_after: Option<usize>,
}

struct Session {
    id: u64,
    persona: Arc<Persona>,
    state: Arc<Mutex<ServerState>>,
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    phase: Phase,
    username: String,
    tx: Option<ExplicitTx>,
    results: Vec<OpenResult>,
    next_qid: i64,
}

impl Session {
    async fn run(&mut self) -> io::Result<()> {
        if !self.handshake().await? {
            return Ok(());
        }
        loop {
            let Some(bytes) = read_message(&mut self.reader).await? else {
                return Ok(());
            };
            let message = match packstream::decode(&bytes) {
                Ok(Value::Struct(s)) => s,
                Ok(other) => {
                    let m = format!("a request must be a structure, got a {}", other.kind());
                    self.failure(persona::REQUEST_INVALID, &m).await?;
                    return self.writer.flush().await;
                }
                Err(e) => {
                    self.failure(persona::REQUEST_INVALID, &e.to_string())
                        .await?;
                    return self.writer.flush().await;
                }
            };
            let flow = self.handle(message).await?;
            self.writer.flush().await?;
            if let Flow::Close = flow {
                return Ok(());
            }
        }
    }

    /// Magic and version negotiation; false when the connection must close.
    async fn handshake(&mut self) -> io::Result<bool> {
        let mut preamble = [0u8; 20];
        self.reader.read_exact(&mut preamble).await?;
        if preamble[..4] != MAGIC {
            return Ok(false);
        }
        let proposals: Vec<[u8; 4]> = preamble[4..]
            .chunks_exact(4)
            .map(|c| c.try_into().expect("4 bytes"))
            .collect();
        let chosen = negotiate(&proposals, &self.persona.bolt_versions);
        // Recorded before answering, so that a test reading the record after
        // the answer never races the server.
        if let Some(v) = chosen {
            self.with_record(|r| r.bolt_version = Some((v.major, v.minor)));
        }
        let answer = chosen.map_or([0; 4], BoltVersion::to_bytes);
        self.writer.write_all(&answer).await?;
        self.writer.flush().await?;
        Ok(chosen.is_some())
    }

    fn with_record(&self, f: impl FnOnce(&mut ConnectionRecord)) {
        let mut state = lock(&self.state);
        if let Some(r) = state.connections.iter_mut().find(|r| r.id == self.id) {
            f(r);
        }
    }

    async fn handle(&mut self, message: Struct) -> io::Result<Flow> {
        let Struct { tag, fields } = message;
        {
            let mut logged = fields.clone();
            if let (HELLO, Some(Value::Map(entries))) = (tag, logged.first_mut()) {
                for (k, v) in entries.iter_mut() {
                    if k == "credentials" {
                        *v = "<redacted>".into();
                    }
                }
            }
            lock(&self.state).requests.push(Request {
                connection: self.id,
                message: request_name(tag),
                fields: logged,
            });
        }

        if self.phase == Phase::AwaitHello {
            if tag != HELLO {
                let m = format!("expected HELLO, got {}", request_name(tag));
                self.failure(persona::REQUEST_INVALID, &m).await?;
                return Ok(Flow::Close);
            }
            return self.hello(fields).await;
        }
        match tag {
            GOODBYE => return Ok(Flow::Close),
            RESET => {
                self.results.clear();
                self.tx = None;
                self.phase = Phase::Ready;
                self.success(Value::empty_map()).await?;
            }
            RUN | PULL | DISCARD | BEGIN | COMMIT | ROLLBACK if self.phase == Phase::Failed => {
                self.send(IGNORED, vec![]).await?;
            }
            RUN => return self.run_statement(fields).await,
            PULL => return self.stream(fields, true).await,
            DISCARD => return self.stream(fields, false).await,
            BEGIN => self.begin(fields).await?,
            COMMIT | ROLLBACK => {
                if self.tx.take().is_none() {
                    let m = format!("{} outside of a transaction", request_name(tag));
                    self.failure(persona::REQUEST_INVALID, &m).await?;
                } else {
                    self.results.clear();
                    let meta = if tag == COMMIT {
                        Value::map([("bookmark", "FB:dbwarden-test-bookmark")])
                    } else {
                        Value::empty_map()
                    };
                    self.success(meta).await?;
                }
            }
            other => {
                let m = format!("message {} is not allowed here", request_name(other));
                self.failure(persona::REQUEST_INVALID, &m).await?;
                return Ok(Flow::Close);
            }
        }
        Ok(Flow::Continue)
    }

    async fn hello(&mut self, fields: Vec<Value>) -> io::Result<Flow> {
        let extra = fields.into_iter().next().unwrap_or(Value::Null);
        let text = |k: &str| extra.get(k).and_then(Value::as_str).map(str::to_string);
        let (principal, credentials) = (text("principal"), text("credentials"));
        let authorized = {
            let state = lock(&self.state);
            let forced = state.faults.contains(&Fault::AuthFailure);
            let known = state.users.is_empty()
                || state
                    .users
                    .iter()
                    .any(|(u, p)| Some(u) == principal.as_ref() && Some(p) == credentials.as_ref());
            !forced && known
        };
        let user_agent = text("user_agent");
        self.with_record(|r| {
            r.user_agent = user_agent;
            r.principal = principal.clone();
            r.authenticated = authorized;
        });
        if !authorized {
            self.failure(
                persona::UNAUTHORIZED,
                "The client is unauthorized due to authentication failure.",
            )
            .await?;
            return Ok(Flow::Close);
        }
        self.username = principal.unwrap_or_default();
        self.phase = Phase::Ready;
        let meta = Value::map([
            ("server", Value::from(self.persona.server_agent())),
            ("connection_id", format!("bolt-{}", self.id).into()),
        ]);
        self.success(meta).await?;
        Ok(Flow::Continue)
    }

    async fn begin(&mut self, fields: Vec<Value>) -> io::Result<()> {
        if self.tx.is_some() || !self.results.is_empty() {
            return self
                .failure(
                    persona::REQUEST_INVALID,
                    "BEGIN while a transaction or result is open",
                )
                .await;
        }
        let begin_extra = fields.into_iter().next().unwrap_or_else(Value::empty_map);
        let database = begin_extra
            .get("db")
            .and_then(Value::as_str)
            .unwrap_or("neo4j")
            .to_string();
        let transaction_id = lock(&self.state).next_transaction_id(&database);
        self.tx = Some(ExplicitTx {
            transaction_id,
            database,
            begin_extra,
        });
        self.success(Value::empty_map()).await
    }

    async fn run_statement(&mut self, fields: Vec<Value>) -> io::Result<Flow> {
        let mut fields = fields.into_iter();
        let (query, params, extra) = match (fields.next(), fields.next(), fields.next()) {
            (Some(Value::String(q)), Some(p @ Value::Map(_)), e) => {
                (q, p, e.unwrap_or_else(Value::empty_map))
            }
            _ => {
                self.failure(
                    persona::REQUEST_INVALID,
                    "RUN needs a query string and a parameter map",
                )
                .await?;
                return Ok(Flow::Continue);
            }
        };
        if self.tx.is_none() && !self.results.is_empty() {
            self.failure(
                persona::REQUEST_INVALID,
                "RUN while the previous auto-commit result is still open",
            )
            .await?;
            return Ok(Flow::Continue);
        }

        // Record the statement and build its own transaction.
        let (own, faults) = {
            let mut state = lock(&self.state);
            let (transaction_id, database, begin_extra, metadata) = match &self.tx {
                Some(tx) => (
                    tx.transaction_id.clone(),
                    tx.database.clone(),
                    Some(tx.begin_extra.clone()),
                    tx.begin_extra.get("tx_metadata").cloned(),
                ),
                None => {
                    let db = extra.get("db").and_then(Value::as_str).unwrap_or("neo4j");
                    (
                        state.next_transaction_id(db),
                        db.to_string(),
                        None,
                        extra.get("tx_metadata").cloned(),
                    )
                }
            };
            let query_id = state.next_query_id();
            state.statements.push(Statement {
                connection: self.id,
                query: query.clone(),
                params: params.clone(),
                extra: extra.clone(),
                begin_extra,
                transaction_id: transaction_id.clone(),
                query_id: query_id.clone(),
                username: self.username.clone(),
            });
            let mut own =
                Tx::running(&transaction_id, &query_id, &self.username, &query).database(&database);
            own.metadata = metadata.unwrap_or_else(Value::empty_map);
            own.connection_id = format!("bolt-{}", self.id);
            (own, state.faults.clone())
        };

        // Faults, then the persona.
        let delay: Duration = faults
            .iter()
            .map(|f| match f {
                Fault::Slow { delay } => *delay,
                Fault::SlowMatching { contains, delay } if query.contains(contains.as_str()) => {
                    *delay
                }
                _ => Duration::ZERO,
            })
            .sum();
        // The client's transaction timeout (RUN's or BEGIN's `tx_timeout`,
        // in milliseconds) stops a statement that would run longer.
        let tx_timeout = extra
            .get("tx_timeout")
            .or_else(|| {
                self.tx
                    .as_ref()
                    .and_then(|t| t.begin_extra.get("tx_timeout"))
            })
            .and_then(Value::as_int)
            .filter(|ms| *ms > 0)
            .map(|ms| Duration::from_millis(ms as u64));
        if let Some(limit) = tx_timeout.filter(|l| delay > *l) {
            tokio::time::sleep(limit).await;
            self.failure(
                persona::TRANSACTION_TIMED_OUT,
                "The transaction has been terminated. Retry your operation in a new transaction, and you should see a successful result. The transaction has not completed within the timeout specified at its start by the client.",
            )
            .await?;
            return Ok(Flow::Continue);
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // A read-access session: `mode: "r"` in RUN's or BEGIN's extra.
        let read_only = extra
            .get("mode")
            .or_else(|| self.tx.as_ref().and_then(|t| t.begin_extra.get("mode")))
            .and_then(Value::as_str)
            == Some("r");
        let normalized = persona::normalize(&query);
        let missing = faults.iter().find_map(|f| match f {
            Fault::ProcedureNotFound { procedure }
                if normalized.contains(&format!("CALL {procedure}(")) =>
            {
                Some(persona::procedure_not_found(procedure))
            }
            Fault::FailMatching {
                starts_with,
                code,
                message,
            } if query.trim_start().starts_with(starts_with.as_str()) => {
                Some(persona::Failure::new(code, message.clone()))
            }
            _ => None,
        });
        let database = own.database.clone();
        let result = match missing {
            Some(failure) => Err(failure),
            None => {
                let ctx = RunContext {
                    connection: self.id,
                    query: &query,
                    params: &params,
                    own,
                    read_only,
                };
                self.persona.run(&mut lock(&self.state), &ctx)
            }
        };
        let rows = match result {
            Ok(rows) => rows,
            Err(Failure { code, message }) => {
                self.failure(&code, &message).await?;
                return Ok(Flow::Continue);
            }
        };

        let mut meta = vec![
            ("fields".to_string(), Value::list(rows.fields)),
            ("t_first".to_string(), Value::Integer(0)),
        ];
        let qid = if self.tx.is_some() {
            let qid = self.next_qid;
            self.next_qid += 1;
            meta.push(("qid".to_string(), qid.into()));
            qid
        } else {
            -1
        };
        let drop_after = faults.iter().find_map(|f| match f {
            Fault::DropMidStream { after_records } => Some(*after_records),
            _ => None,
        });
        self.results.push(OpenResult {
            qid,
            database,
            rows: rows.records.into(),
            sent: 0,
            drop_after,
        });
        self.success(Value::Map(meta)).await?;
        Ok(Flow::Continue)
    }

    /// PULL (`pull`) or DISCARD: `n` rows of the result `qid` (-1: the last).
    async fn stream(&mut self, fields: Vec<Value>, pull: bool) -> io::Result<Flow> {
        let extra = fields.into_iter().next().unwrap_or_else(Value::empty_map);
        let n = extra.get("n").and_then(Value::as_int).unwrap_or(-1);
        let qid = extra.get("qid").and_then(Value::as_int).unwrap_or(-1);
        let at = if qid == -1 {
            self.results.len().checked_sub(1)
        } else {
            self.results.iter().position(|r| r.qid == qid)
        };
        let Some(at) = at else {
            let m = format!("no open result for qid {qid}");
            self.failure(persona::REQUEST_INVALID, &m).await?;
            return Ok(Flow::Continue);
        };
        if n == 0 || n < -1 {
            let m = format!("invalid n {n}: must be positive or -1");
            self.failure(persona::REQUEST_INVALID, &m).await?;
            return Ok(Flow::Continue);
        }
        let mut budget = if n == -1 { usize::MAX } else { n as usize };
        let mut result = self.results.remove(at);
        let drop_after = if pull { result.drop_after } else { None };
        while budget > 0 {
            if drop_after.is_some_and(|limit| result.sent >= limit) {
                break;
            }
            let Some(row) = result.rows.pop_front() else {
                break;
            };
            if pull {
                self.send(RECORD, vec![Value::List(row)]).await?;
            }
            result.sent += 1;
            budget -= 1;
        }
        if drop_after.is_some_and(|limit| result.sent >= limit || result.rows.is_empty()) {
            // The fault: close the socket before the summary.
            self.writer.flush().await?;
            let _ = self.writer.shutdown().await;
            return Ok(Flow::Close);
        }
        if !result.rows.is_empty() {
            self.results.insert(at, result);
            self.success(Value::map([("has_more", true)])).await?;
            return Ok(Flow::Continue);
        }
        let mut meta = vec![
            ("type".to_string(), Value::from("r")),
            ("t_last".to_string(), Value::Integer(0)),
            ("db".to_string(), Value::from(result.database)),
        ];
        if self.tx.is_none() {
            meta.push(("bookmark".to_string(), "FB:dbwarden-test-bookmark".into()));
        }
        self.success(Value::Map(meta)).await?;
        Ok(Flow::Continue)
    }

    async fn send(&mut self, tag: u8, fields: Vec<Value>) -> io::Result<()> {
        let bytes = packstream::encode(&Value::structure(tag, fields));
        self.writer.write_all(&frame(&bytes)).await
    }

    async fn success(&mut self, meta: Value) -> io::Result<()> {
        self.send(SUCCESS, vec![meta]).await
    }

    /// FAILURE; the connection ignores requests until RESET.
    async fn failure(&mut self, code: &str, message: &str) -> io::Result<()> {
        self.phase = Phase::Failed;
        self.results.clear();
        let meta = Value::map([("code", code), ("message", message)]);
        self.send(FAILURE, vec![meta]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: fn(u8, u8) -> BoltVersion = BoltVersion::new;

    fn supported() -> Vec<BoltVersion> {
        vec![V(4, 4), V(4, 1), V(4, 0)]
    }

    #[test]
    fn negotiation_respects_order_and_ranges() {
        let s = supported();
        // neo4rs 0.9
        let p = [[0, 0, 4, 4], [0, 0, 3, 4], [0, 0, 1, 4], [0, 0, 0, 4]];
        assert_eq!(negotiate(&p, &s), Some(V(4, 4)));
        // neo4rs 0.8
        assert_eq!(
            negotiate(&[[0, 0, 1, 4], [0, 0, 0, 4], [0; 4], [0; 4]], &s),
            Some(V(4, 1))
        );
        // 4.3 only: not supported, so the next proposal wins.
        assert_eq!(
            negotiate(&[[0, 0, 3, 4], [0, 0, 0, 4], [0; 4], [0; 4]], &s),
            Some(V(4, 0))
        );
        // A range 4.3..4.0 picks the highest supported inside it.
        assert_eq!(
            negotiate(&[[0, 3, 3, 4], [0; 4], [0; 4], [0; 4]], &s),
            Some(V(4, 1))
        );
        // A range 4.4..4.2 covers 4.4.
        assert_eq!(
            negotiate(&[[0, 2, 4, 4], [0; 4], [0; 4], [0; 4]], &s),
            Some(V(4, 4))
        );
        // Bolt 5 only, the 5.7+ manifest marker, and nothing at all.
        assert_eq!(negotiate(&[[0, 0, 0, 5], [0; 4], [0; 4], [0; 4]], &s), None);
        assert_eq!(
            negotiate(&[[0, 0, 1, 0xFF], [0; 4], [0; 4], [0; 4]], &s),
            None
        );
        assert_eq!(negotiate(&[[0; 4]; 4], &s), None);
        assert_eq!(V(4, 4).to_bytes(), [0, 0, 4, 4]);
    }

    #[test]
    fn framing_splits_at_the_chunk_limit() {
        assert_eq!(frame(&[]), [0, 0]);
        assert_eq!(frame(&[1, 2]), [0, 2, 1, 2, 0, 0]);
        let big = vec![9u8; MAX_CHUNK + 1];
        let framed = frame(&big);
        assert_eq!(framed[..2], [0xFF, 0xFF]);
        assert_eq!(framed[2 + MAX_CHUNK..2 + MAX_CHUNK + 3], [0, 1, 9]);
        assert_eq!(framed[framed.len() - 2..], [0, 0]);
        assert_eq!(framed.len(), big.len() + 2 + 2 + 2);
    }

    #[tokio::test]
    async fn reading_skips_keep_alives_and_joins_chunks() {
        let mut wire: Vec<u8> = vec![0, 0, 0, 0]; // two keep-alives
        wire.extend_from_slice(&[0, 2, 0xB0, 0x0F, 0, 1, 0xAA, 0, 0]);
        wire.extend(frame(&vec![5u8; MAX_CHUNK + 10]));
        let mut r: &[u8] = &wire;
        assert_eq!(
            read_message(&mut r).await.unwrap(),
            Some(vec![0xB0, 0x0F, 0xAA])
        );
        assert_eq!(
            read_message(&mut r).await.unwrap().unwrap().len(),
            MAX_CHUNK + 10
        );
        assert_eq!(read_message(&mut r).await.unwrap(), None);
        let mut truncated: &[u8] = &[0, 4, 1, 2];
        assert!(read_message(&mut truncated).await.is_err());
    }
}
