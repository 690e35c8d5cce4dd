//! The node's wasmtime engine and the loading of modules into [`Program`]s.
//!
//! One engine per node: compiled code is tied to the engine that compiled it, and the
//! instance pool, the epoch counter and the linkers are all engine-wide. The engine is
//! configured for async calls (a guest runs as a tokio future), epoch interruption (a
//! ticker thread bumps the epoch every [`EngineOptions::epoch_tick`], and every running
//! guest yields to tokio at each tick — that is how a spinning guest is cancelled and how
//! it shares a worker thread), and the pooling instance allocator (instantiation in
//! microseconds, memory slots recycled).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use wasmtime::component::{Component, Linker as ComponentLinker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Linker, Module, OptLevel, PoolingAllocationConfig,
    Precompiled,
};
use wasmtime_wasi::p2::bindings::CommandPre;

use super::cache::{self, ArtifactCache};
use super::program::{P1State, P2State, Pre, Program, ProgramKind};
use super::WasmError;

/// Default cap on one instance's linear memory, and the size of a pool memory slot:
/// 4 GiB, the whole 32-bit address space, so compiled code needs no bounds checks.
pub const DEFAULT_MAX_MEMORY_PER_INSTANCE: u64 = 4 << 30;

/// Default interval between epoch ticks: how long a busy guest runs before it yields,
/// and so about how long a neighbour's wake-up waits behind each busy guest queued on
/// its worker thread. A yield costs a few microseconds, so 2 ms costs a spinning guest
/// about 0.1% while keeping the latency its neighbours see to a few milliseconds.
pub const DEFAULT_EPOCH_TICK: Duration = Duration::from_millis(2);

/// Pool slots per instance. A Rust wasm32-wasip2 component holds a few core instances
/// (the program and small shims), one memory and two tables; components made with the
/// preview 1 adapter (other toolchains) carry a second memory.
const MEMORIES_PER_INSTANCE: u32 = 2;
const CORE_INSTANCES_PER_INSTANCE: u32 = 4;
const TABLES_PER_INSTANCE: u32 = 4;

/// Elements one pooled table may hold.
const POOL_TABLE_ELEMENTS: usize = 1 << 16;

/// wasmtime's default guard region around each memory (32 MiB after, and as much before).
const MEMORY_GUARD: u64 = 32 << 20;

/// The most virtual address space the memory pool may reserve: half of x86-64's 128 TiB
/// user space, leaving room for everything else the process maps.
const POOL_ADDRESS_BUDGET: u64 = 64 << 40;

/// The smallest memory slot worth pooling: below it, on-demand allocation serves better
/// than a pool whose instances could hardly hold anything.
const MIN_POOL_SLOT: u64 = 64 << 20;

/// The WebAssembly page size.
const WASM_PAGE: u64 = 64 << 10;

/// How the node's engine is built.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Directory for compiled artifacts (created if missing). Artifacts of other engine
    /// configurations sit in sibling directories and are left alone.
    pub cache_dir: PathBuf,
    /// How many instances may run at once on this node — containers, init containers,
    /// exec and probe runs together. Sizes the instance pool; an instantiation beyond it
    /// fails (see [`super::Exit::Failed`]).
    pub max_instances: u32,
    /// The most linear memory one instance may have, whatever its `limits.memory`; also
    /// the virtual size of each pool memory slot. Below 4 GiB, compiled code carries
    /// explicit bounds checks (a few percent slower) in exchange for less reserved
    /// address space. Lowered automatically when `max_instances` slots of this size
    /// would not fit the address space (half of the 128 TiB, i.e. beyond about 8000
    /// instances at 4 GiB).
    pub max_memory_per_instance: u64,
    /// How often the epoch advances: a running guest yields to tokio (and notices
    /// cancellation) at least this often.
    pub epoch_tick: Duration,
}

impl Default for EngineOptions {
    /// A cache under the system's temporary directory and room for 1000 instances; a
    /// node agent sets both.
    fn default() -> Self {
        Self::new(std::env::temp_dir().join("wasmkube-compiled"), 1000)
    }
}

impl EngineOptions {
    /// Options with the defaults for everything but the cache directory and capacity.
    pub fn new(cache_dir: impl Into<PathBuf>, max_instances: u32) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            max_instances,
            max_memory_per_instance: DEFAULT_MAX_MEMORY_PER_INSTANCE,
            epoch_tick: DEFAULT_EPOCH_TICK,
        }
    }
}

/// How loads were served since the engine started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Modules compiled from WebAssembly.
    pub compiled: u64,
    /// Modules loaded from a compiled artifact on disk.
    pub from_disk: u64,
    /// Loads answered by a program already in memory (or by waiting for a concurrent
    /// load of the same digest).
    pub from_memory: u64,
}

/// The node's WebAssembly engine. Cheap to clone; all clones share one engine, one
/// instance pool and one program cache.
#[derive(Clone)]
pub struct WasmEngine {
    shared: Arc<EngineShared>,
}

/// What every clone of a [`WasmEngine`] and every [`Program`] shares.
pub(crate) struct EngineShared {
    pub(crate) engine: Engine,
    /// The cap applied to every instance's memory (see
    /// [`EngineOptions::max_memory_per_instance`]).
    pub(crate) max_memory_per_instance: u64,
    p1_linker: Linker<P1State>,
    p2_linker: ComponentLinker<P2State>,
    cache: ArtifactCache,
    /// Programs by digest. The cell makes concurrent loads of one digest wait for a
    /// single compile; a failed load leaves the cell empty so the next load retries.
    programs: Mutex<HashMap<String, Arc<OnceCell<Program>>>>,
    pooling: bool,
    compiled: AtomicU64,
    from_disk: AtomicU64,
    from_memory: AtomicU64,
}

impl WasmEngine {
    /// Builds the engine, its linkers and its artifact directory, and starts the epoch
    /// ticker (a thread that ends once the engine and every program of it are dropped).
    ///
    /// Tries the pooling allocator first, lowering the per-instance memory so that the
    /// pool fits the address space; if even 64 MiB slots would not fit, or the pool
    /// cannot be created, falls back to on-demand allocation with a warning (slower
    /// instantiation, same behaviour).
    pub fn new(options: EngineOptions) -> Result<Self, WasmError> {
        let max_memory = options
            .max_memory_per_instance
            .clamp(WASM_PAGE, 1 << 48)
            .next_multiple_of(WASM_PAGE);
        let max_instances = options.max_instances.max(1);

        let mut pooled = None;
        match plan_pool(max_instances, max_memory) {
            None => tracing::warn!(
                max_instances,
                max_memory_per_instance = max_memory,
                budget = POOL_ADDRESS_BUDGET,
                "an instance pool this large would not fit the address space; using \
                 on-demand allocation"
            ),
            Some(slot) => {
                if slot < max_memory {
                    tracing::warn!(
                        max_instances,
                        requested = max_memory,
                        max_memory_per_instance = slot,
                        "memory per instance lowered so that the instance pool fits the \
                         address space"
                    );
                }
                let mut config = base_config(slot);
                config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool(
                    max_instances,
                    slot,
                )));
                match Engine::new(&config) {
                    Ok(engine) => pooled = Some((engine, slot)),
                    Err(error) => tracing::warn!(
                        max_instances,
                        max_memory_per_instance = slot,
                        error = %format!("{error:#}"),
                        "cannot create the instance pool; using on-demand allocation"
                    ),
                }
            }
        }
        let pooling = pooled.is_some();
        let (engine, max_memory) = match pooled {
            Some(pooled) => pooled,
            None => (
                Engine::new(&base_config(max_memory))
                    .map_err(|e| WasmError::Engine(format!("{e:#}")))?,
                max_memory,
            ),
        };

        let mut p1_linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut p1_linker, |state: &mut P1State| {
            &mut state.wasi
        })
        .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        let mut p2_linker = ComponentLinker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut p2_linker)
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        super::net::shadow_socket_functions(&mut p2_linker)
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        super::names::shadow_name_lookup(&mut p2_linker)
            .map_err(|e| WasmError::Engine(format!("{e:#}")))?;

        let cache = ArtifactCache::open(&options.cache_dir, &engine)?;
        spawn_ticker(&engine, options.epoch_tick.max(Duration::from_millis(1)));
        tracing::info!(
            pooling,
            max_instances,
            max_memory_per_instance = max_memory,
            cache = %cache.dir().display(),
            "wasm engine ready"
        );
        Ok(Self {
            shared: Arc::new(EngineShared {
                engine,
                max_memory_per_instance: max_memory,
                p1_linker,
                p2_linker,
                cache,
                programs: Mutex::new(HashMap::new()),
                pooling,
                compiled: AtomicU64::new(0),
                from_disk: AtomicU64::new(0),
                from_memory: AtomicU64::new(0),
            }),
        })
    }

    /// Makes the module at `module_path`, whose content digest is `digest`, runnable.
    ///
    /// Served from memory when this digest was loaded before; else from the compiled
    /// artifact on disk; else compiled (on a blocking thread) and the artifact stored.
    /// Concurrent loads of one digest compile once. The digest is trusted to identify
    /// the file's content (the fetcher verified it); it is not re-hashed here.
    ///
    /// The module's kind (preview 1 core module or preview 2 component) comes from its
    /// header; WebAssembly text is accepted too (for tests and development).
    pub async fn load(&self, digest: &str, module_path: &Path) -> Result<Program, WasmError> {
        cache::file_stem(digest)?;
        let cell = {
            let mut programs = self
                .shared
                .programs
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            programs.entry(digest.to_owned()).or_default().clone()
        };
        if let Some(program) = cell.get() {
            self.shared.from_memory.fetch_add(1, Ordering::Relaxed);
            return Ok(program.clone());
        }
        let mut loaded_here = false;
        let program = cell
            .get_or_try_init(|| {
                loaded_here = true;
                let shared = self.shared.clone();
                let digest = digest.to_owned();
                let path = module_path.to_owned();
                async move {
                    let task_digest = digest.clone();
                    tokio::task::spawn_blocking(move || {
                        EngineShared::load_blocking(&shared, &task_digest, &path)
                    })
                    .await
                    .map_err(|e| WasmError::Task {
                        digest,
                        message: e.to_string(),
                    })?
                }
            })
            .await;
        let program = match program {
            Ok(program) => program,
            Err(error) => {
                // Leave no empty cell behind for a digest that may never load.
                let mut programs = self
                    .shared
                    .programs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if programs
                    .get(digest)
                    .is_some_and(|c| Arc::ptr_eq(c, &cell) && c.get().is_none())
                {
                    programs.remove(digest);
                }
                return Err(error);
            }
        };
        if !loaded_here {
            self.shared.from_memory.fetch_add(1, Ordering::Relaxed);
        }
        Ok(program.clone())
    }

    /// Forgets the in-memory program of `digest` (when no pod uses the module any
    /// more). Running instances keep their code; the artifact on disk stays.
    pub fn evict(&self, digest: &str) {
        let mut programs = self
            .shared
            .programs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        programs.remove(digest);
    }

    /// How loads were served so far.
    pub fn stats(&self) -> LoadStats {
        LoadStats {
            compiled: self.shared.compiled.load(Ordering::Relaxed),
            from_disk: self.shared.from_disk.load(Ordering::Relaxed),
            from_memory: self.shared.from_memory.load(Ordering::Relaxed),
        }
    }

    /// Whether instances come from the pooling allocator (false after a fallback to
    /// on-demand allocation).
    pub fn pooling(&self) -> bool {
        self.shared.pooling
    }

    /// The most linear memory one instance may have: the configured maximum, or less if
    /// the pool had to shrink its slots to fit.
    pub fn max_memory_per_instance(&self) -> u64 {
        self.shared.max_memory_per_instance
    }

    /// The directory holding this engine configuration's compiled artifacts.
    pub fn artifact_dir(&self) -> &Path {
        self.shared.cache.dir()
    }
}

impl EngineShared {
    fn load_blocking(
        shared: &Arc<EngineShared>,
        digest: &str,
        module_path: &Path,
    ) -> Result<Program, WasmError> {
        let started = Instant::now();
        let artifact = shared.cache.path(digest)?;
        let (compiled, source) = match shared.load_artifact(&artifact) {
            Some(compiled) => {
                shared.from_disk.fetch_add(1, Ordering::Relaxed);
                (compiled, "artifact")
            }
            None => {
                let compiled = shared.compile(digest, module_path)?;
                shared.compiled.fetch_add(1, Ordering::Relaxed);
                match compiled.serialize() {
                    Ok(bytes) => {
                        if let Err(error) = shared.cache.store(&artifact, &bytes) {
                            tracing::warn!(
                                digest,
                                path = %artifact.display(),
                                %error,
                                "cannot store the compiled module; it will be compiled again \
                                 next time"
                            );
                        }
                    }
                    Err(error) => tracing::warn!(
                        digest,
                        error = %format!("{error:#}"),
                        "cannot serialize the compiled module"
                    ),
                }
                (compiled, "compiled")
            }
        };
        let program = shared.link(digest, compiled)?;
        tracing::info!(
            digest,
            kind = ?program.kind(),
            source,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "module loaded"
        );
        Ok(program)
    }

    /// The artifact at `path`, if there is a usable one. An unusable artifact (from a
    /// wasmtime that wrote the same compatibility hash but still differs, or damaged) is
    /// removed so that the compile that follows replaces it.
    fn load_artifact(&self, path: &Path) -> Option<Compiled> {
        let kind = match Engine::detect_precompiled_file(path) {
            Ok(Some(kind)) => kind,
            Ok(None) => {
                if path.exists() {
                    tracing::warn!(path = %path.display(), "discarding a damaged compiled module");
                    let _ = std::fs::remove_file(path);
                }
                return None;
            }
            // Usually: no artifact yet.
            Err(_) => return None,
        };
        // SAFETY: the file lies in this engine's private cache directory and was written
        // by `ArtifactCache::store` from `Module::serialize`/`Component::serialize` of this
        // same engine configuration (the directory name is its compatibility hash);
        // wasmtime still checks the header. Files there are only ever replaced by rename,
        // never modified in place, so the mapped file stays unchanged while the code lives.
        let loaded = match kind {
            Precompiled::Module => {
                unsafe { Module::deserialize_file(&self.engine, path) }.map(Compiled::Module)
            }
            Precompiled::Component => {
                unsafe { Component::deserialize_file(&self.engine, path) }.map(Compiled::Component)
            }
        };
        match loaded {
            Ok(compiled) => Some(compiled),
            Err(error) => {
                tracing::warn!(
                    path = %path.display(),
                    error = %format!("{error:#}"),
                    "discarding an unusable compiled module"
                );
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    fn compile(&self, digest: &str, module_path: &Path) -> Result<Compiled, WasmError> {
        let bytes = std::fs::read(module_path).map_err(|source| WasmError::Read {
            path: module_path.to_owned(),
            source,
        })?;
        let kind = detect_kind(&bytes).map_err(|problem| match problem {
            KindProblem::NotWasm(found) => WasmError::NotWasm {
                path: module_path.to_owned(),
                found,
            },
            KindProblem::Unsupported(detail) => WasmError::UnsupportedEncoding {
                path: module_path.to_owned(),
                detail,
            },
        })?;
        let compile_error = |e: wasmtime::Error| WasmError::Compile {
            digest: digest.to_owned(),
            message: format!("{e:#}"),
        };
        let started = Instant::now();
        let compiled = match kind {
            ProgramKind::Core => {
                Compiled::Module(Module::new(&self.engine, &bytes).map_err(compile_error)?)
            }
            ProgramKind::Component => {
                Compiled::Component(Component::new(&self.engine, &bytes).map_err(compile_error)?)
            }
        };
        tracing::debug!(
            digest,
            bytes = bytes.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "module compiled"
        );
        Ok(compiled)
    }

    fn link(self: &Arc<Self>, digest: &str, compiled: Compiled) -> Result<Program, WasmError> {
        let link_error = |e: wasmtime::Error| WasmError::Link {
            digest: digest.to_owned(),
            message: format!("{e:#}"),
        };
        let pre = match compiled {
            Compiled::Module(module) => {
                match module.get_export("_start") {
                    Some(wasmtime::ExternType::Func(ty))
                        if ty.params().len() == 0 && ty.results().len() == 0 => {}
                    Some(_) => {
                        return Err(WasmError::NotCommand {
                            digest: digest.to_owned(),
                            message: "its `_start` export is not a function taking and \
                                      returning nothing"
                                .into(),
                        })
                    }
                    None => {
                        return Err(WasmError::NotCommand {
                            digest: digest.to_owned(),
                            message: "it exports no `_start` function".into(),
                        })
                    }
                }
                Pre::Core(
                    self.p1_linker
                        .instantiate_pre(&module)
                        .map_err(link_error)?,
                )
            }
            Compiled::Component(component) => {
                let pre = self
                    .p2_linker
                    .instantiate_pre(&component)
                    .map_err(link_error)?;
                Pre::Component(CommandPre::new(pre).map_err(|e| WasmError::NotCommand {
                    digest: digest.to_owned(),
                    message: format!("it does not export `wasi:cli/run`: {e:#}"),
                })?)
            }
        };
        Ok(Program::new(digest.to_owned(), self.clone(), pre))
    }
}

/// A module compiled by this engine, before linking.
enum Compiled {
    Module(Module),
    Component(Component),
}

impl Compiled {
    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        match self {
            Compiled::Module(module) => module.serialize(),
            Compiled::Component(component) => component.serialize(),
        }
    }
}

/// Why bytes are not something [`detect_kind`] recognises.
#[derive(Debug, PartialEq, Eq)]
enum KindProblem {
    /// Not WebAssembly at all; says what the bytes look like instead.
    NotWasm(String),
    /// WebAssembly magic with a version or layer this engine does not run.
    Unsupported(String),
}

/// Tells a core module from a component by the header: `\0asm`, then a version of
/// 1 (core) or a layer of 1 (component model).
fn detect_kind(bytes: &[u8]) -> Result<ProgramKind, KindProblem> {
    if let Some(header) = bytes.strip_prefix(b"\0asm") {
        return match header.get(..4) {
            Some([1, 0, 0, 0]) => Ok(ProgramKind::Core),
            Some([_, _, 1, 0]) => Ok(ProgramKind::Component),
            Some(other) => Err(KindProblem::Unsupported(format!(
                "the header has version bytes {} (1 0 0 0 is a core module, x x 1 0 a \
                 component)",
                hex_bytes(other)
            ))),
            None => Err(KindProblem::Unsupported(
                "the file ends inside the 8-byte header".into(),
            )),
        };
    }
    if let Some(kind) = wat_kind(bytes) {
        return Ok(kind);
    }
    Err(KindProblem::NotWasm(describe_start(bytes)))
}

/// The kind of a WebAssembly text file: its first form after whitespace and `;;`
/// comments is `(module` or `(component`.
fn wat_kind(bytes: &[u8]) -> Option<ProgramKind> {
    let text = std::str::from_utf8(bytes.get(..bytes.len().min(4096))?)
        .or_else(|e| std::str::from_utf8(&bytes[..e.valid_up_to()]))
        .ok()?;
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        match rest.strip_prefix(";;") {
            Some(comment) => rest = comment.split_once('\n').map_or("", |(_, after)| after),
            None => break,
        }
    }
    let form = rest.strip_prefix('(')?.trim_start();
    let keyword: String = form
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    match keyword.as_str() {
        "module" => Some(ProgramKind::Core),
        "component" => Some(ProgramKind::Component),
        _ => None,
    }
}

/// "starts with 7f 45 4c 46 02 01 01 00 ("\x7fELF\x02\x01\x01\0")" or "is empty".
fn describe_start(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "is empty".into();
    }
    let head = &bytes[..bytes.len().min(8)];
    format!(
        "starts with {} ({:?}) instead of 00 61 73 6d (\"\\0asm\")",
        hex_bytes(head),
        String::from_utf8_lossy(head)
    )
}

fn hex_bytes(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The engine settings shared by both allocation strategies; `max_memory` is the
/// address space reserved per linear memory.
fn base_config(max_memory: u64) -> Config {
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed)
        .wasm_component_model(true)
        .parallel_compilation(true)
        .memory_reservation(max_memory)
        .memory_guard_size(MEMORY_GUARD);
    config
}

/// The memory slot size of a pool for `max_instances` instances: `max_memory`, or less
/// if that many slots would not fit [`POOL_ADDRESS_BUDGET`]; `None` if even
/// [`MIN_POOL_SLOT`] would not fit.
fn plan_pool(max_instances: u32, max_memory: u64) -> Option<u64> {
    let total_memories = u64::from(max_instances.saturating_mul(MEMORIES_PER_INSTANCE)).max(1);
    let fitting = (POOL_ADDRESS_BUDGET / total_memories).checked_sub(2 * MEMORY_GUARD)?;
    let slot = max_memory.min(fitting - fitting % WASM_PAGE);
    (slot >= MIN_POOL_SLOT).then_some(slot)
}

/// The instance pool: `max_instances` instances of up to [`MEMORIES_PER_INSTANCE`]
/// memories of `max_memory` bytes each, plus their tables and async stacks.
fn pool(max_instances: u32, max_memory: u64) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(max_instances)
        .total_core_instances(max_instances.saturating_mul(CORE_INSTANCES_PER_INSTANCE))
        .total_memories(max_instances.saturating_mul(MEMORIES_PER_INSTANCE))
        .total_tables(max_instances.saturating_mul(TABLES_PER_INSTANCE))
        // One fiber stack per running instance.
        .total_stacks(max_instances)
        .max_memory_size(usize::try_from(max_memory).unwrap_or(usize::MAX))
        .table_elements(POOL_TABLE_ELEMENTS)
        .max_tables_per_module(TABLES_PER_INSTANCE)
        .max_memories_per_module(1);
    pool
}

/// Advances the engine's epoch every `tick` until the engine is gone.
fn spawn_ticker(engine: &Engine, tick: Duration) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || loop {
            std::thread::sleep(tick);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => break,
            }
        });
    if let Err(error) = spawned {
        // Without a ticker a spinning guest cannot be stopped: say so loudly.
        tracing::error!(%error, "cannot start the epoch ticker thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_fits_the_address_space() {
        // The default node: 2000 instances of 4 GiB fit.
        assert_eq!(plan_pool(2000, 4 << 30), Some(4 << 30));
        // 10 000 instances do not at 4 GiB: slots shrink, to whole pages.
        let slot = plan_pool(10_000, 4 << 30).unwrap();
        assert!(slot < 4 << 30 && slot > 3 << 30, "{slot}");
        assert_eq!(slot % WASM_PAGE, 0);
        assert!(20_000 * (slot + 2 * MEMORY_GUARD) <= POOL_ADDRESS_BUDGET);
        // A small request is kept as is.
        assert_eq!(plan_pool(10_000, 256 << 20), Some(256 << 20));
        // Far too many instances: no pool.
        assert_eq!(plan_pool(1_000_000, 4 << 30), None);
    }

    #[test]
    fn kinds_come_from_the_header() {
        assert_eq!(detect_kind(b"\0asm\x01\0\0\0rest"), Ok(ProgramKind::Core));
        assert_eq!(
            detect_kind(b"\0asm\x0d\0\x01\0rest"),
            Ok(ProgramKind::Component)
        );
        assert!(matches!(
            detect_kind(b"\0asm\x02\0\0\0"),
            Err(KindProblem::Unsupported(_))
        ));
        assert!(matches!(
            detect_kind(b"\0asm"),
            Err(KindProblem::Unsupported(_))
        ));
        assert_eq!(detect_kind(b";; hi\n  (module)"), Ok(ProgramKind::Core));
        assert_eq!(detect_kind(b"(component\n)"), Ok(ProgramKind::Component));
    }

    #[test]
    fn non_wasm_says_what_it_looks_like() {
        let Err(KindProblem::NotWasm(found)) = detect_kind(b"\x7fELF\x02\x01\x01\0\0\0") else {
            panic!("ELF taken for wasm");
        };
        assert!(found.contains("7f 45 4c 46 02 01 01 00"), "{found}");
        assert!(found.contains("ELF"), "{found}");
        let Err(KindProblem::NotWasm(found)) = detect_kind(b"") else {
            panic!("empty file taken for wasm");
        };
        assert_eq!(found, "is empty");
        assert!(matches!(
            detect_kind(b"<html>not found</html>"),
            Err(KindProblem::NotWasm(_))
        ));
    }
}
