//! Users' terminals: a program (a shell) on a PTY in the user's sandbox,
//! which the master's WebSockets attach to through
//! [`StreamKind::TerminalAttach`](warren_protocol::StreamKind) streams.
//!
//! A terminal outlives its streams: its output is read into a bounded
//! scrollback (sent first to each stream that attaches) and to the streams
//! attached now, each through a queue of [`QUEUE_CHUNKS`] chunks. The PTY
//! is read only as fast as the slowest attached stream takes its output
//! (the program then blocks on its writes, as on a real terminal), and a
//! stream that takes nothing for [`LAG_LIMIT`] is dropped (`Busy`) so the
//! others go on: a flood costs at most the scrollback and the queues. With
//! no stream attached the output goes to the scrollback alone. The
//! terminal ends when its program exits (its other processes are hung up,
//! then streams get the exit and close), when it is hung up, or when it sat
//! with no stream attached and no output for its idle timeout. A worker
//! that dies takes its terminals with it (their processes die with it).

use crate::sandbox::pty::Pty;
use crate::tasks::launch::{Group, Launch, Launcher};
use crate::workspace::Workspaces;
use rustix::fd::OwnedFd;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use warren_protocol::stream::Stream;
use warren_protocol::{
    OpError, Reply, TerminalEvent, TerminalId, TerminalInfo, TerminalOpen, UserCtx, UserId,
    MAX_TERMINAL_SIDE,
};

/// Bytes read from a PTY at once (also the most one chunk holds).
const READ_CHUNK: usize = 16 * 1024;

/// Chunks queued for each attached stream (at most 256 KiB).
const QUEUE_CHUNKS: usize = 16;

/// An attached stream whose queue stays full this long is dropped.
const LAG_LIMIT: Duration = Duration::from_secs(5);

/// Input chunks queued for a program that is not reading (a stream waits
/// for room at most [`LAG_LIMIT`], then is dropped).
const TYPING_CHUNKS: usize = 4;

/// Streams attached to one terminal at most (each gets its own copy of the
/// scrollback).
const MAX_ATTACHED: u32 = 16;

/// Between a hang-up's SIGHUP and its SIGKILL when a program ends or sits
/// idle (an explicit hang-up says its own).
const HANG_UP_GRACE: Duration = Duration::from_secs(2);

/// How long output of processes the program left behind is still read
/// after it exited and they were killed.
const DRAIN: Duration = Duration::from_secs(2);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

/// The terminals this worker runs.
pub struct Terminals {
    workspaces: Arc<Workspaces>,
    launcher: Arc<Launcher>,
    open: Mutex<HashMap<TerminalId, Arc<Terminal>>>,
    /// Terminals each user has open or is opening (the limit's count).
    per_user: Mutex<HashMap<UserId, u32>>,
}

struct Terminal {
    id: TerminalId,
    user: UserId,
    command: Vec<String>,
    pid: u32,
    created_ms: i64,
    /// The PTY's controller end, non-blocking: output read, input written.
    controller: AsyncFd<OwnedFd>,
    /// One input chunk at a time, whoever types.
    typing: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    /// The program's end (`code`, `signal`), once every byte was read.
    exited: watch::Sender<Option<(Option<i32>, Option<i32>)>>,
    group: Group,
}

#[derive(Clone)]
struct Client {
    number: u64,
    /// Encoded [`TerminalEvent::Output`]s, shared by every stream.
    queue: mpsc::Sender<Arc<Vec<u8>>>,
    dropped: Arc<watch::Sender<bool>>,
}

struct State {
    scrollback: VecDeque<u8>,
    scrollback_limit: usize,
    cols: u16,
    rows: u16,
    last_activity: Instant,
    last_activity_ms: i64,
    attached: u32,
    /// The attached streams, by attachment number: their queues, and
    /// what tells one it was dropped.
    clients: Vec<Client>,
    next_client: u64,
}

impl Terminal {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn info(&self) -> TerminalInfo {
        let state = self.lock();
        TerminalInfo {
            id: self.id,
            command: self.command.clone(),
            pid: self.pid,
            cols: state.cols,
            rows: state.rows,
            created_ms: self.created_ms,
            last_activity_ms: state.last_activity_ms,
            attached: state.attached,
            ended: self.exited.borrow().is_some(),
        }
    }

    fn touch(state: &mut State) {
        state.last_activity = Instant::now();
        state.last_activity_ms = now_ms();
    }

    /// Keeps `bytes` in the scrollback and queues them for the attached
    /// streams (who is attached is read under the scrollback's lock, so a
    /// stream attaching sees each byte exactly once: in its scrollback or
    /// queued), waiting while a queue is full; a stream that takes nothing
    /// for [`LAG_LIMIT`] is dropped.
    async fn publish(&self, bytes: &[u8]) {
        let clients = {
            let mut state = self.lock();
            state.scrollback.extend(bytes);
            let excess = state
                .scrollback
                .len()
                .saturating_sub(state.scrollback_limit);
            state.scrollback.drain(..excess);
            Self::touch(&mut state);
            state.clients.clone()
        };
        if clients.is_empty() {
            return;
        }
        // Encoded once, whatever the number of streams.
        let chunk = match encode(TerminalEvent::Output(bytes.to_vec())) {
            Ok(chunk) => Arc::new(chunk),
            Err(err) => {
                tracing::warn!(error = %err, terminal = %self.id, "cannot encode a terminal's output");
                return;
            }
        };
        for client in clients {
            let sent = tokio::time::timeout(LAG_LIMIT, client.queue.send(chunk.clone())).await;
            if sent.is_err() {
                self.lock()
                    .clients
                    .retain(|other| other.number != client.number);
                client.dropped.send_replace(true);
            }
        }
    }

    /// SIGHUP to every process of the terminal, SIGKILL after `grace`.
    fn hang_up(self: &Arc<Self>, grace: Duration) {
        self.group.hang_up();
        let terminal = self.clone();
        tokio::spawn(async move {
            let mut exited = terminal.exited.subscribe();
            let ended = exited.wait_for(Option::is_some);
            if tokio::time::timeout(grace, ended).await.is_err() {
                terminal.group.kill().await;
            }
        });
    }

    /// Writes typed input to the program (all of it, as the PTY takes it).
    async fn type_in(&self, mut bytes: &[u8]) -> std::io::Result<()> {
        let _turn = self.typing.lock().await;
        while !bytes.is_empty() {
            let mut ready = self.controller.writable().await?;
            match ready.try_io(|fd| Ok(rustix::io::write(fd.get_ref(), bytes)?)) {
                Ok(Ok(n)) => bytes = &bytes[n..],
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
        Self::touch(&mut self.lock());
        Ok(())
    }
}

impl Terminals {
    pub fn new(workspaces: Arc<Workspaces>, launcher: Arc<Launcher>) -> Arc<Terminals> {
        Arc::new(Terminals {
            workspaces,
            launcher,
            open: Mutex::new(HashMap::new()),
            per_user: Mutex::new(HashMap::new()),
        })
    }

    fn lock_open(&self) -> MutexGuard<'_, HashMap<TerminalId, Arc<Terminal>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_per_user(&self) -> MutexGuard<'_, HashMap<UserId, u32>> {
        self.per_user.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Open terminals (running or ending), for the heartbeat and metrics.
    pub fn count(&self) -> usize {
        self.lock_open().len()
    }

    /// The user's terminal `id` (another user's is not found, like a
    /// missing one).
    fn find(&self, user: &UserCtx, id: TerminalId) -> Result<Arc<Terminal>, OpError> {
        self.lock_open()
            .get(&id)
            .filter(|terminal| terminal.user == user.id)
            .cloned()
            .ok_or_else(|| OpError::NotFound(format!("no terminal {id}")))
    }

    pub fn list(&self, user: &UserCtx) -> Reply {
        let mut terminals: Vec<TerminalInfo> = self
            .lock_open()
            .values()
            .filter(|terminal| terminal.user == user.id)
            .map(|terminal| terminal.info())
            .collect();
        terminals.sort_by_key(|info| (info.created_ms, info.id));
        Reply::Terminals(terminals)
    }

    pub fn get(&self, user: &UserCtx, id: TerminalId) -> Result<Reply, OpError> {
        Ok(Reply::Terminal(self.find(user, id)?.info()))
    }

    pub fn resize(
        &self,
        user: &UserCtx,
        id: TerminalId,
        cols: u16,
        rows: u16,
    ) -> Result<Reply, OpError> {
        check_size(cols, rows)?;
        let terminal = self.find(user, id)?;
        crate::sandbox::pty::set_size(terminal.controller.get_ref(), cols, rows)
            .map_err(|err| OpError::Internal(format!("cannot resize the terminal: {err}")))?;
        let mut state = terminal.lock();
        (state.cols, state.rows) = (cols, rows);
        Ok(Reply::Done)
    }

    pub fn hang_up(
        &self,
        user: &UserCtx,
        id: TerminalId,
        grace: Duration,
    ) -> Result<Reply, OpError> {
        let terminal = self.find(user, id)?;
        // Gone for the API at once (a `DELETE` is answered, so a `GET`
        // after it must not find it); its processes get their grace, its
        // streams the exit, and the user's count frees when it has ended.
        self.lock_open().remove(&id);
        terminal.hang_up(grace);
        Ok(Reply::Done)
    }

    /// Starts the program on a new PTY; answers once it runs.
    pub async fn open(
        self: &Arc<Self>,
        user: UserCtx,
        open: TerminalOpen,
    ) -> Result<Reply, OpError> {
        if open.argv.is_empty() || open.argv[0].is_empty() {
            return Err(OpError::Invalid("the command is empty".into()));
        }
        check_size(open.cols, open.rows)?;
        self.launcher.check()?;
        if self.lock_open().contains_key(&open.id) {
            return Err(OpError::Conflict(format!("terminal {} exists", open.id)));
        }
        {
            let mut per_user = self.lock_per_user();
            let count = per_user.entry(user.id).or_default();
            if open.max_per_user != 0 && *count >= open.max_per_user {
                return Err(OpError::TooManyTerminals {
                    limit: open.max_per_user,
                });
            }
            *count += 1;
        }
        let opened = self.start(&user, open).await;
        if opened.is_err() {
            self.release(user.id);
        }
        opened
    }

    fn release(&self, user: UserId) {
        let mut per_user = self.lock_per_user();
        if let Some(count) = per_user.get_mut(&user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_user.remove(&user);
            }
        }
    }

    async fn start(self: &Arc<Self>, user: &UserCtx, open: TerminalOpen) -> Result<Reply, OpError> {
        // The user's workspace exists, and is theirs, before their shell runs.
        let workspaces = self.workspaces.clone();
        let (id, uid) = (user.id, user.uid);
        crate::ops::blocking(move || workspaces.open_as(id, uid).map(|_| ())).await?;
        let pty = Pty::open(open.cols, open.rows, user.uid)
            .map_err(|err| OpError::Busy(format!("cannot open a terminal: {err}")))?;
        let (stdin, stdout, stderr) = pty
            .stdio()
            .map_err(|err| OpError::Busy(format!("cannot open a terminal: {err}")))?;
        let mut env = vec![("TERM".into(), "xterm-256color".into())];
        env.extend(
            open.env
                .iter()
                .map(|(key, value)| (key.into(), value.into())),
        );
        let launch = Launch {
            argv: open.argv.iter().map(Into::into).collect(),
            cwd: open.cwd.clone(),
            env,
            group: format!("terminal-{}", open.id),
            stdin,
            stdout,
            stderr,
            terminal: true,
            read_execute: Vec::new(),
            read_only: Vec::new(),
        };
        let spawned = self.launcher.spawn(user, launch).await?;
        // Only the program holds the terminal end now: when it and what it
        // left behind are gone, reading the controller fails (EIO).
        let controller = pty
            .into_async_controller()
            .map_err(|err| OpError::Internal(format!("terminal: {err}")))?;
        let terminal = Arc::new(Terminal {
            id: open.id,
            user: user.id,
            command: open.argv.clone(),
            pid: spawned.pid,
            created_ms: now_ms(),
            controller,
            typing: tokio::sync::Mutex::new(()),
            state: Mutex::new(State {
                scrollback: VecDeque::new(),
                scrollback_limit: open.scrollback as usize,
                cols: open.cols,
                rows: open.rows,
                last_activity: Instant::now(),
                last_activity_ms: now_ms(),
                attached: 0,
                clients: Vec::new(),
                next_client: 0,
            }),
            exited: watch::channel(None).0,
            group: Group::from(spawned.group),
        });
        self.lock_open().insert(open.id, terminal.clone());
        let reader = tokio::spawn(read_output(terminal.clone()));
        tokio::spawn(
            self.clone()
                .supervise(terminal.clone(), spawned.child, reader),
        );
        if open.idle_timeout_ms > 0 {
            let idle = Duration::from_millis(open.idle_timeout_ms);
            tokio::spawn(watch_idle(terminal.clone(), idle));
        }
        Ok(Reply::Terminal(terminal.info()))
    }

    /// Waits for the program's end, then ends the terminal: the rest of
    /// its processes hung up, the last output read, the exit told.
    async fn supervise(
        self: Arc<Self>,
        terminal: Arc<Terminal>,
        mut child: tokio::process::Child,
        mut reader: tokio::task::JoinHandle<()>,
    ) {
        use std::os::unix::process::ExitStatusExt;
        let status = child.wait().await;
        let end = match status {
            Ok(status) => (status.code(), status.signal()),
            Err(err) => {
                tracing::warn!(error = %err, terminal = %terminal.id, "cannot wait for a terminal's program");
                (None, None)
            }
        };
        terminal.group.hang_up();
        tokio::time::sleep(Duration::from_millis(50)).await;
        terminal.group.kill().await;
        if tokio::time::timeout(DRAIN, &mut reader).await.is_err() {
            // Another process holds the terminal end open (a user's
            // `exec 3<>/dev/pts/N`): stop reading. The last reference to
            // the controller then goes with this terminal, which hangs the
            // terminal up for whoever still holds it.
            reader.abort();
        }
        terminal.exited.send_replace(Some(end));
        // The streams take what is queued, then see the end.
        terminal.lock().clients.clear();
        terminal.group.remove();
        self.lock_open().remove(&terminal.id);
        self.release(terminal.user);
    }

    /// Serves an attached stream until its client leaves or the terminal
    /// ends.
    pub async fn attach(self: Arc<Self>, user: UserCtx, id: TerminalId, stream: Stream) {
        let (mut sender, mut receiver) = stream.split();
        let terminal = match self.find(&user, id) {
            Ok(terminal) => terminal,
            Err(err) => return sender.abort(err),
        };
        let (queue, mut live) = mpsc::channel(QUEUE_CHUNKS);
        let (dropped, mut was_dropped) = watch::channel(false);
        // Kept here too: the flag's sender must outlive the entry (a
        // closed flag would read as dropped).
        let dropped = Arc::new(dropped);
        let (scrollback, client) = {
            let mut state = terminal.lock();
            if state.attached >= MAX_ATTACHED {
                drop(state);
                return sender.abort(OpError::Busy(format!(
                    "{MAX_ATTACHED} clients are attached to this terminal already"
                )));
            }
            state.attached += 1;
            let client = state.next_client;
            state.next_client += 1;
            // A terminal that has just ended takes no more streams: this
            // one gets the scrollback, then (its queue closed) the end.
            if terminal.exited.borrow().is_none() {
                state.clients.push(Client {
                    number: client,
                    queue,
                    dropped: dropped.clone(),
                });
            }
            let scrollback: Vec<u8> = state.scrollback.iter().copied().collect();
            (scrollback, client)
        };
        let exited = terminal.exited.subscribe();
        // Input goes through a task of its own: a program that does not
        // read must not stop this stream from delivering output or seeing
        // its client leave.
        let (typing, mut typed) = mpsc::channel::<Vec<u8>>(TYPING_CHUNKS);
        let typist = tokio::spawn({
            let terminal = terminal.clone();
            async move {
                while let Some(bytes) = typed.recv().await {
                    if let Err(err) = terminal.type_in(&bytes).await {
                        tracing::debug!(error = %err, terminal = %terminal.id, "input not taken");
                    }
                }
            }
        });
        let outcome = async {
            for chunk in scrollback.chunks(READ_CHUNK) {
                send_unless_dropped(&mut sender, &mut was_dropped, &encode(TerminalEvent::Output(chunk.to_vec()))?).await?;
            }
            loop {
                tokio::select! {
                    received = live.recv() => match received {
                        Some(event) => send_unless_dropped(&mut sender, &mut was_dropped, &event).await?,
                        // The queue closed: the terminal ended (all its
                        // output taken), or this stream was too slow.
                        None => {
                            let Some((code, signal)) = *exited.borrow() else {
                                return Err(OpError::Busy(
                                    "this client took no output for too long".into(),
                                ));
                            };
                            send_unless_dropped(&mut sender, &mut was_dropped, &encode(TerminalEvent::Exited { code, signal })?).await?;
                            return Ok(Some(()));
                        }
                    },
                    typed = receiver.recv() => match typed {
                        Some(Ok(bytes)) => match tokio::time::timeout(LAG_LIMIT, typing.send(bytes)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => return Ok(None),
                            Err(_) => return Err(OpError::Busy(
                                "the terminal's program took no input for too long".into(),
                            )),
                        },
                        // The client left (or its side failed): detach.
                        Some(Err(_)) | None => return Ok(None),
                    },
                }
            }
        }
        .await;
        // Input not yet taken goes with the stream.
        typist.abort();
        {
            let mut state = terminal.lock();
            state.attached = state.attached.saturating_sub(1);
            state.clients.retain(|other| other.number != client);
            Terminal::touch(&mut state);
        }
        match outcome {
            Ok(_) => {
                let _ = sender.finish();
            }
            Err(err) => sender.abort(err),
        }
    }

    /// Hangs up every terminal at once (the worker is exiting).
    pub fn hang_up_all(&self) {
        for terminal in self.lock_open().values() {
            terminal.group.kill_now();
        }
    }
}

/// Sends an encoded event, unless the stream is dropped for lagging
/// meanwhile.
async fn send_unless_dropped(
    sender: &mut warren_protocol::stream::StreamSender,
    dropped: &mut watch::Receiver<bool>,
    event: &[u8],
) -> Result<(), OpError> {
    tokio::select! {
        sent = sender.send(event) => sent,
        _ = dropped.wait_for(|dropped| *dropped) => Err(OpError::Busy(
            "this client took no output for too long".into(),
        )),
    }
}

fn encode(event: TerminalEvent) -> Result<Vec<u8>, OpError> {
    warren_protocol::codec::encode_message(&event)
        .map_err(|err| OpError::Internal(format!("terminal: {err}")))
}

/// Reads the program's output until every process holding the terminal
/// end is gone.
async fn read_output(terminal: Arc<Terminal>) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let mut ready = match terminal.controller.readable().await {
            Ok(ready) => ready,
            Err(err) => {
                tracing::warn!(error = %err, terminal = %terminal.id, "cannot poll a terminal");
                return;
            }
        };
        match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut buf)?)) {
            Ok(Ok(0)) => return,
            Ok(Ok(n)) => terminal.publish(&buf[..n]).await,
            // EIO: the terminal end is closed everywhere.
            Ok(Err(_)) => return,
            Err(_would_block) => continue,
        }
    }
}

/// Hangs the terminal up once it has had no stream attached and no
/// output for `idle`.
async fn watch_idle(terminal: Arc<Terminal>, idle: Duration) {
    let mut exited = terminal.exited.subscribe();
    let mut next_check = idle;
    loop {
        tokio::select! {
            _ = exited.wait_for(Option::is_some) => return,
            () = tokio::time::sleep(next_check) => {}
        }
        let quiet = {
            let state = terminal.lock();
            (state.attached == 0).then(|| state.last_activity.elapsed())
        };
        match quiet {
            Some(quiet) if quiet >= idle => {
                tracing::info!(terminal = %terminal.id, "hanging up a terminal left idle");
                terminal.hang_up(HANG_UP_GRACE);
                return;
            }
            Some(quiet) => next_check = idle - quiet,
            None => next_check = idle,
        }
    }
}

fn check_size(cols: u16, rows: u16) -> Result<(), OpError> {
    let side = 1..=MAX_TERMINAL_SIDE;
    if !side.contains(&cols) || !side.contains(&rows) {
        return Err(OpError::Invalid(format!(
            "a terminal of {cols}×{rows}: each side must be 1 to {MAX_TERMINAL_SIDE}"
        )));
    }
    Ok(())
}
