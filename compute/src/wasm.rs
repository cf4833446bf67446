//! The WebAssembly executor: wasmtime + WASI preview 1.
//!
//! One [`Engine`] (epoch interruption on) is shared by every run; a background thread advances its
//! epoch every [`EPOCH_TICK`]. Each run gets its own `Store` with a memory limiter and an epoch
//! callback that stops the guest when its timeout elapses or its cancellation token fires, so a
//! module spinning in a loop is interrupted too. Runs are synchronous WASI, on a blocking thread.
//!
//! The guest sees: argv = \[module name, Parameters…\]; the task's environment; every input at its
//! target, read-only (a file input is staged, by hard link or copy, into a per-execution directory
//! that is preopened at the file's parent directory); every `ResultPath` writable; stdout and stderr
//! written to files, each capped at `max_output_bytes` (bytes past the cap are dropped).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use wasmtime::{
    Config, Engine, Linker, Module, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::executor::{ExecError, Executor, RunRequest, RunResult};

/// How often the shared engine's epoch advances: the granularity of timeouts and cancellation.
pub const EPOCH_TICK: Duration = Duration::from_millis(20);
/// Compiled modules kept in memory, keyed by the SHA-256 of their bytes.
const MODULE_CACHE_ENTRIES: usize = 32;
/// Frames of a trap's backtrace shown in its message.
const BACKTRACE_FRAMES: usize = 6;

/// Runs `wasm` tasks. Cheap to clone; all clones share one engine and its epoch thread, which stops
/// when the last clone is dropped.
#[derive(Clone)]
pub struct WasmExecutor {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    stop: Arc<AtomicBool>,
    modules: Mutex<HashMap<[u8; 32], Module>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for WasmExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmExecutor").finish_non_exhaustive()
    }
}

impl WasmExecutor {
    /// Builds the engine and starts its epoch thread.
    pub fn new() -> Result<Self, ExecError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config)
            .map_err(|e| ExecError::Internal(format!("cannot create the wasm engine: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ticker, flag) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("caravel-wasm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker.increment_epoch();
                }
            })
            .map_err(|e| ExecError::Internal(format!("cannot start the wasm epoch thread: {e}")))?;
        Ok(WasmExecutor {
            inner: Arc::new(Inner {
                engine,
                stop,
                modules: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl Executor for WasmExecutor {
    fn engines(&self) -> Vec<String> {
        vec!["wasm".into()]
    }

    fn run(
        &self,
        req: RunRequest,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<RunResult, ExecError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            if cancel.is_cancelled() {
                return Err(ExecError::Cancelled);
            }
            match tokio::task::spawn_blocking(move || run_blocking(&inner, req, cancel)).await {
                Ok(r) => r,
                Err(e) => Err(ExecError::Internal(format!(
                    "the wasm run panicked or was aborted: {e}"
                ))),
            }
        })
    }
}

/// Why the epoch callback stopped the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Timeout,
    Cancel,
}

struct RunState {
    wasi: WasiP1Ctx,
    limiter: Limiter,
    stop: Option<Stop>,
}

/// `StoreLimits` (with `trap_on_grow_failure`) that also records whether the memory limit was hit,
/// so the failure is reported as "memory limit exceeded" rather than as a generic trap.
/// The memory limit applies to all the run's linear memories together (a module with many
/// memories gets no more than one with one), tracked as they grow.
struct Limiter {
    inner: StoreLimits,
    memory_limit: usize,
    /// Bytes of all memories so far.
    memory_total: usize,
    exceeded: bool,
}

/// Instances (the entry module and its `ImportModules`), tables and memories one run may create.
pub const MAX_INSTANCES: usize = 16;
pub const MAX_TABLES: usize = 16;
pub const MAX_MEMORIES: usize = 16;
/// Elements of one table (a table of funcrefs costs 8-16 bytes each on the host).
pub const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .memory_total
            .saturating_sub(current)
            .saturating_add(desired);
        if total > self.memory_limit {
            self.exceeded = true;
            wasmtime::bail!(
                "memory limit of {} bytes exceeded across all memories",
                self.memory_limit
            );
        }
        let grown = self.inner.memory_growing(current, desired, maximum)?;
        if grown {
            self.memory_total = total;
        }
        Ok(grown)
    }
    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }
    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }
    fn instances(&self) -> usize {
        self.inner.instances()
    }
    fn tables(&self) -> usize {
        self.inner.tables()
    }
    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

fn run_blocking(
    inner: &Inner,
    req: RunRequest,
    cancel: CancellationToken,
) -> Result<RunResult, ExecError> {
    let engine_kind = req.task.engine.kind_lower();
    if engine_kind != "wasm" {
        return Err(ExecError::UnsupportedEngine(req.task.engine.kind.clone()));
    }
    let params = match caravel_model::params::WasmParams::try_from(&req.task.engine) {
        Ok(p) => p,
        Err(errs)
            if errs
                .iter()
                .all(|e| e.field == "EntryModule" && e.message.starts_with("is required")) =>
        {
            return Err(ExecError::NoEntryModule);
        }
        Err(errs) => {
            return Err(ExecError::BadParams(
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            ));
        }
    };
    let entry_target = params.entry_module;
    let entry_point = params.entrypoint;
    let module = load_module(inner, &req, &entry_target)?;
    let imports = params.import_modules;

    // WASI context: args, env, stdio, preopens.
    let stdout = CappedOutput::create(&req.stdout_path, req.max_output_bytes)?;
    let stderr = CappedOutput::create(&req.stderr_path, req.max_output_bytes)?;
    let mut b = WasiCtxBuilder::new();
    b.allow_blocking_current_thread(true);
    let argv0 = entry_target
        .rsplit('/')
        .next()
        .unwrap_or(&entry_target)
        .to_string();
    let mut argv = vec![argv0];
    argv.extend(req.args.iter().cloned());
    b.args(&argv);
    for (k, v) in &req.env {
        b.env(k, v);
    }
    b.stdout(stdout.clone());
    b.stderr(stderr.clone());
    for m in mounts(&req)? {
        let perms = if m.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        b.preopened_dir(&m.host, &m.guest, perms).map_err(|e| {
            ExecError::Setup(format!(
                "cannot expose {} at {}: {e}",
                m.host.display(),
                m.guest
            ))
        })?;
    }
    let wasi = b.build_p1();

    let memory_limit = usize::try_from(req.memory_limit).unwrap_or(usize::MAX);
    let limits = StoreLimitsBuilder::new()
        .memory_size(memory_limit)
        .instances(MAX_INSTANCES)
        .tables(MAX_TABLES)
        .memories(MAX_MEMORIES)
        .table_elements(MAX_TABLE_ELEMENTS)
        .trap_on_grow_failure(true)
        .build();
    let state = RunState {
        wasi,
        limiter: Limiter {
            inner: limits,
            memory_limit,
            memory_total: 0,
            exceeded: false,
        },
        stop: None,
    };
    let mut store = Store::new(&inner.engine, state);
    store.limiter(|s| &mut s.limiter);
    let deadline = (req.timeout_secs > 0)
        .then(|| Instant::now().checked_add(Duration::from_secs(req.timeout_secs)))
        .flatten();
    let token = cancel.clone();
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |mut ctx| {
        let why = if token.is_cancelled() {
            Some(Stop::Cancel)
        } else if deadline.is_some_and(|d| Instant::now() >= d) {
            Some(Stop::Timeout)
        } else {
            None
        };
        match why {
            Some(w) => {
                ctx.data_mut().stop = Some(w);
                Ok(UpdateDeadline::Interrupt)
            }
            None => Ok(UpdateDeadline::Continue(1)),
        }
    });

    let mut linker: Linker<RunState> = Linker::new(&inner.engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut RunState| &mut s.wasi)
        .map_err(|e| ExecError::Internal(format!("cannot add WASI to the linker: {e}")))?;
    for target in &imports {
        let m = load_module(inner, &req, target)?;
        let name = m
            .name()
            .map(str::to_string)
            .unwrap_or_else(|| module_name_from_target(target));
        if let Err(e) = linker.module(&mut store, &name, &m) {
            return Err(classify(e, &store, &req, |m| {
                ExecError::Link(format!("import module {target} (as {name:?}): {m}"))
            }));
        }
    }
    let instance = match linker.instantiate(&mut store, &module) {
        Ok(i) => i,
        Err(e) => {
            return match classify_exit(&e) {
                Some(code) => Ok(finish(code, &stdout, &stderr)),
                None => Err(classify(e, &store, &req, ExecError::Link)),
            };
        }
    };
    let Some(func) = instance.get_func(&mut store, &entry_point) else {
        return Err(ExecError::EntryPointNotExported(entry_point));
    };
    let func = func
        .typed::<(), ()>(&store)
        .map_err(|e| ExecError::EntryPointSignature {
            name: entry_point.clone(),
            reason: format!("{e} (it must take no arguments and return nothing)"),
        })?;
    let outcome = func.call(&mut store, ());
    let _ = stdout.flush_file();
    let _ = stderr.flush_file();
    match outcome {
        Ok(()) => Ok(finish(0, &stdout, &stderr)),
        Err(e) => match classify_exit(&e) {
            Some(code) => Ok(finish(code, &stdout, &stderr)),
            None => Err(classify(e, &store, &req, ExecError::Trap)),
        },
    }
}

fn finish(exit_code: i32, stdout: &CappedOutput, stderr: &CappedOutput) -> RunResult {
    RunResult {
        exit_code,
        stdout_capped: stdout.capped(),
        stderr_capped: stderr.capped(),
    }
}

fn classify_exit(e: &wasmtime::Error) -> Option<i32> {
    e.downcast_ref::<I32Exit>().map(|x| x.0)
}

/// Maps a failed instantiation or call to the reason users see: our own interruption (timeout or
/// cancel), the memory limit, or else `other` with a trap summary.
fn classify(
    e: wasmtime::Error,
    store: &Store<RunState>,
    req: &RunRequest,
    other: impl FnOnce(String) -> ExecError,
) -> ExecError {
    let st = store.data();
    let interrupted = e.downcast_ref::<Trap>() == Some(&Trap::Interrupt);
    match st.stop {
        Some(Stop::Cancel) if interrupted => return ExecError::Cancelled,
        Some(Stop::Timeout) if interrupted => return ExecError::Timeout(req.timeout_secs),
        _ => {}
    }
    if st.limiter.exceeded {
        return ExecError::MemoryLimit(req.memory_limit);
    }
    other(trap_summary(&e))
}

/// `wasm `unreachable` instruction executed (in abort <- main <- _start)`: the trap and the first
/// frames of its backtrace.
fn trap_summary(e: &wasmtime::Error) -> String {
    let mut msg = match e.downcast_ref::<Trap>() {
        Some(t) => {
            let s = t.to_string();
            s.strip_prefix("wasm trap: ")
                .map(str::to_string)
                .unwrap_or(s)
        }
        None => e
            .chain()
            .map(|c| c.to_string())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(": "),
    };
    if let Some(bt) = e.downcast_ref::<wasmtime::WasmBacktrace>() {
        let frames: Vec<String> = bt
            .frames()
            .iter()
            .take(BACKTRACE_FRAMES)
            .map(|f| match f.func_name() {
                Some(n) => format!("{:#}", rustc_demangle::demangle(n)),
                None => format!("func[{}]", f.func_index()),
            })
            .collect();
        if !frames.is_empty() {
            let more = if bt.frames().len() > BACKTRACE_FRAMES {
                " <- …"
            } else {
                ""
            };
            msg = format!("{msg} (in {}{more})", frames.join(" <- "));
        }
    }
    msg
}

fn module_name_from_target(target: &str) -> String {
    let base = target.rsplit('/').next().unwrap_or(target);
    base.strip_suffix(".wasm").unwrap_or(base).to_string()
}

/// Reads and compiles the module at an input `target`, through the in-memory cache.
/// Where a module named by its path in the task's file system is on the host: an input mounted at
/// exactly that path, or a file inside an input directory (an S3 prefix, a local directory) mounted
/// above it, as Bacalhau resolves it.
fn module_path(req: &RunRequest, target: &str) -> Result<std::path::PathBuf, ExecError> {
    module_file(&req.inputs, target)
}

/// The host file of the module at guest path `target`: an input whose target it is (an s3
/// object's directory of one file is that file), or a plain path below a directory input.
pub(crate) fn module_file(
    inputs: &[crate::executor::PreparedInput],
    target: &str,
) -> Result<std::path::PathBuf, ExecError> {
    let want = target.trim_end_matches('/');
    if let Some(i) = inputs
        .iter()
        .find(|i| i.target.trim_end_matches('/') == want)
    {
        // An s3 object arrives as a directory holding it: a directory of exactly one file is
        // that file.
        if i.host_path.is_dir()
            && let Ok(entries) = std::fs::read_dir(&i.host_path)
        {
            let files: Vec<std::path::PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .take(2)
                .collect();
            if let [only] = files.as_slice()
                && only.is_file()
            {
                return Ok(only.clone());
            }
        }
        return Ok(i.host_path.clone());
    }
    for i in inputs {
        let base = i.target.trim_end_matches('/');
        if let Some(rest) = want.strip_prefix(base).and_then(|r| r.strip_prefix('/'))
            && i.host_path.is_dir()
        {
            let rel = std::path::Path::new(rest);
            // Only plain names below the input: nothing may climb out of it.
            if rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
            {
                return Ok(i.host_path.join(rel));
            }
        }
    }
    Err(ExecError::ModuleNotFound(target.to_string()))
}

fn load_module(inner: &Inner, req: &RunRequest, target: &str) -> Result<Module, ExecError> {
    let path = module_path(req, target)?;
    if path.is_dir() {
        return Err(ExecError::InvalidModule {
            target: target.into(),
            reason: "it is a directory, not a .wasm file".into(),
        });
    }
    let bytes = std::fs::read(&path).map_err(|e| ExecError::InvalidModule {
        target: target.into(),
        reason: format!("cannot read it: {e}"),
    })?;
    let key: [u8; 32] = Sha256::digest(&bytes).into();
    if let Ok(cache) = inner.modules.lock()
        && let Some(m) = cache.get(&key)
    {
        return Ok(m.clone());
    }
    let module = Module::new(&inner.engine, &bytes).map_err(|e| ExecError::InvalidModule {
        target: target.into(),
        reason: e
            .chain()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(": "),
    })?;
    if let Ok(mut cache) = inner.modules.lock() {
        if cache.len() >= MODULE_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, module.clone());
    }
    Ok(module)
}

/// A directory preopened in the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    pub host: PathBuf,
    pub guest: String,
    pub writable: bool,
}

/// Normalises an absolute guest path (`/a//b/` → `/a/b`), refusing relative paths and `..`.
pub(crate) fn normalize_guest(p: &str) -> Result<String, ExecError> {
    if !p.starts_with('/') {
        return Err(ExecError::Setup(format!(
            "guest path {p:?} is not absolute"
        )));
    }
    let mut parts = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ExecError::Setup(format!("guest path {p:?} contains `..`")));
            }
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// The preopens of a run: directory inputs at their targets, file inputs staged per parent directory,
/// result directories writable.
pub(crate) fn mounts(req: &RunRequest) -> Result<Vec<Mount>, ExecError> {
    let mut out: Vec<Mount> = Vec::new();
    // guest parent dir -> (files: (name, host, read_only))
    let mut staged: BTreeMap<String, Vec<(String, PathBuf, bool)>> = BTreeMap::new();
    for i in &req.inputs {
        let guest = normalize_guest(&i.target)?;
        let meta = std::fs::metadata(&i.host_path).map_err(|e| {
            ExecError::Setup(format!(
                "input for {guest} is missing at {}: {e}",
                i.host_path.display()
            ))
        })?;
        if meta.is_dir() {
            out.push(Mount {
                host: i.host_path.clone(),
                guest,
                writable: !i.read_only,
            });
        } else {
            if guest == "/" {
                return Err(ExecError::Setup(
                    "a file input cannot have the target /".into(),
                ));
            }
            let (parent, name) = guest.rsplit_once('/').unwrap_or(("", guest.as_str()));
            let parent = if parent.is_empty() {
                "/".to_string()
            } else {
                parent.to_string()
            };
            staged.entry(parent).or_default().push((
                name.to_string(),
                i.host_path.clone(),
                i.read_only,
            ));
        }
    }
    for (n, (parent, files)) in staged.into_iter().enumerate() {
        let dir = req.scratch_dir.join("staged").join(n.to_string());
        std::fs::create_dir_all(&dir)
            .map_err(|e| ExecError::Setup(format!("cannot create {}: {e}", dir.display())))?;
        let mut writable = false;
        for (name, host, ro) in files {
            let dst = dir.join(&name);
            let _ = std::fs::remove_file(&dst);
            if std::fs::hard_link(&host, &dst).is_err() {
                std::fs::copy(&host, &dst).map_err(|e| {
                    ExecError::Setup(format!(
                        "cannot stage {} as {parent}/{name}: {e}",
                        host.display()
                    ))
                })?;
            }
            writable |= !ro;
        }
        out.push(Mount {
            host: dir,
            guest: parent,
            writable,
        });
    }
    for r in &req.results {
        let guest = normalize_guest(&r.guest_path)?;
        std::fs::create_dir_all(&r.host_dir).map_err(|e| {
            ExecError::Setup(format!("cannot create {}: {e}", r.host_dir.display()))
        })?;
        out.push(Mount {
            host: r.host_dir.clone(),
            guest,
            writable: true,
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    for m in &out {
        if !seen.insert(m.guest.clone()) {
            return Err(ExecError::Setup(format!(
                "two inputs or result paths are mounted at {}: give each input and result path its own target",
                m.guest
            )));
        }
    }
    Ok(out)
}

/// stdout/stderr into a file, keeping at most `cap` bytes and dropping the rest (the guest never
/// sees an error, as with a pipe whose reader stopped caring).
#[derive(Clone)]
struct CappedOutput {
    inner: Arc<CappedInner>,
}

struct CappedInner {
    file: std::fs::File,
    cap: u64,
    written: AtomicU64,
    capped: AtomicBool,
}

impl CappedOutput {
    fn create(path: &Path, cap: u64) -> Result<Self, ExecError> {
        let file = std::fs::File::create(path)
            .map_err(|e| ExecError::Setup(format!("cannot create {}: {e}", path.display())))?;
        Ok(CappedOutput {
            inner: Arc::new(CappedInner {
                file,
                cap,
                written: AtomicU64::new(0),
                capped: AtomicBool::new(false),
            }),
        })
    }
    fn capped(&self) -> bool {
        self.inner.capped.load(Ordering::Relaxed)
    }
    fn flush_file(&self) -> std::io::Result<()> {
        (&self.inner.file).flush()
    }
    fn write_capped(&self, buf: &[u8]) -> std::io::Result<()> {
        let written = self.inner.written.load(Ordering::Relaxed);
        let room = self.inner.cap.saturating_sub(written);
        let take = (buf.len() as u64).min(room) as usize;
        if take < buf.len() {
            self.inner.capped.store(true, Ordering::Relaxed);
        }
        if take > 0 {
            (&self.inner.file).write_all(&buf[..take])?;
            self.inner.written.fetch_add(take as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_capped(&bytes)
            .map_err(|e| StreamError::LastOperationFailed(wasmtime::Error::msg(e.to_string())))
    }
    fn flush(&mut self) -> StreamResult<()> {
        self.flush_file()
            .map_err(|e| StreamError::LastOperationFailed(wasmtime::Error::msg(e.to_string())))
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for CappedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.write_capped(buf).map(|()| buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.flush_file())
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_are_normalised_and_dotdot_refused() {
        assert_eq!(normalize_guest("/a//b/").unwrap(), "/a/b");
        assert_eq!(normalize_guest("/").unwrap(), "/");
        assert!(normalize_guest("/a/../etc").is_err());
        assert!(normalize_guest("rel").is_err());
    }

    #[test]
    fn capped_output_drops_bytes_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out");
        let o = CappedOutput::create(&p, 5).unwrap();
        o.write_capped(b"abc").unwrap();
        assert!(!o.capped());
        o.write_capped(b"defgh").unwrap();
        assert!(o.capped());
        assert_eq!(std::fs::read(&p).unwrap(), b"abcde");
    }
}
