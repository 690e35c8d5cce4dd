//! Compiling and running WASI modules: the execution layer under the pod state machine.
//!
//! # Layout
//!
//! - [`WasmEngine`] (`engine.rs`): the node's one wasmtime engine — async, epoch
//!   interruption driven by a ticker thread, the pooling instance allocator sized to the
//!   node's instance capacity — and [`WasmEngine::load`], which turns a module file into a
//!   [`Program`] through the compile cache;
//! - `cache.rs`: compiled artifacts on disk, keyed by module digest *and* the engine's
//!   compatibility hash, written atomically;
//! - [`Program`] (`program.rs`): a pre-linked preview 1 module or preview 2 component;
//!   [`Program::run`] runs one instance with a [`RunSpec`] and reports an [`Exit`];
//! - `cpu.rs`: `limits.cpu` — a CFS-like quota on how long an instance's future is
//!   polled per 100 ms period;
//! - `limits.rs`: the per-instance memory limiter that tells an out-of-memory death from
//!   any other trap;
//! - `stdio.rs`: guest stdout/stderr delivered to an [`OutputSink`].
//! - `net.rs`: pod IPs for preview 2 guests — wasmtime-wasi's `start-bind` and
//!   `start-connect` shadowed so that binds to `0.0.0.0`/`127.0.0.1` land on
//!   [`RunSpec::pod_ip`], and the socket policy that goes with it.
//!
//! # Usage
//!
//! ```no_run
//! # async fn demo(sink: std::sync::Arc<dyn wasmkube_runtime::wasm::OutputSink>)
//! #     -> Result<(), wasmkube_runtime::wasm::WasmError> {
//! use wasmkube_runtime::wasm::{EngineOptions, RunSpec, WasmEngine};
//! use tokio_util::sync::CancellationToken;
//!
//! let engine = WasmEngine::new(EngineOptions::new("/var/lib/wasmkube/compiled", 1000))?;
//! let program = engine.load("sha256:…", "/var/lib/wasmkube/modules/….wasm".as_ref()).await?;
//! let spec = RunSpec::new(vec!["hello".into()], sink.clone(), sink);
//! let exit = program.run(spec, CancellationToken::new()).await;
//! # Ok(()) }
//! ```
//!
//! One engine serves the whole node: modules are compiled once per digest (and once per
//! engine configuration, on disk), and every instance of a program shares the compiled
//! code. Each [`Program::run`] gets a fresh store: nothing but the preopened directories
//! is shared between instances.

mod cache;
mod cpu;
mod engine;
mod limits;
mod names;
mod net;
mod program;
mod stdio;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use engine::{
    EngineOptions, LoadStats, WasmEngine, DEFAULT_EPOCH_TICK, DEFAULT_MAX_MEMORY_PER_INSTANCE,
};
pub use names::{Lookup, Names};
pub use net::Egress;
pub use program::{Exit, Program, ProgramKind, RunSpec};
pub use stdio::OutputBudget;

/// Where a container's stdout or stderr goes. Called with whatever bytes the guest
/// wrote, in order; implementations split lines themselves.
///
/// Called on the thread running the guest, inside its write: it must not block for long.
pub trait OutputSink: Send + Sync + 'static {
    fn write(&self, bytes: &[u8]);

    /// The bound on what the sink holds for a slower reader, if it has one: the guest's
    /// writes then wait while the budget is spent (as a process writing to a full pipe
    /// does) instead of the sink's backlog growing. `None`: every write is taken at once.
    fn budget(&self) -> Option<&OutputBudget> {
        None
    }
}

/// A host directory a container sees at `guest` (a volume mount).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// Why a module could not be made into a runnable [`Program`], or the engine not built.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// The directory for compiled artifacts could not be created.
    #[error("cannot create the compile cache directory {path}: {source}")]
    CacheDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// wasmtime refused the engine configuration.
    #[error("cannot configure the wasm engine: {0}")]
    Engine(String),
    /// The digest cannot name a cache entry (it must look like `sha256:<hex>`).
    #[error("invalid module digest {0:?}: expected letters, digits, '.', '_', '-' and ':'")]
    InvalidDigest(String),
    /// The module file could not be read.
    #[error("cannot read module {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the WebAssembly magic number.
    #[error("not a WebAssembly module: {path} {found}")]
    NotWasm { path: PathBuf, found: String },
    /// The file is WebAssembly, but of an encoding version this engine cannot run.
    #[error("unsupported WebAssembly encoding in {path}: {detail}")]
    UnsupportedEncoding { path: PathBuf, detail: String },
    /// wasmtime rejected the module while validating or compiling it.
    #[error("module {digest} does not compile: {message}")]
    Compile { digest: String, message: String },
    /// The module imports something the WASI host does not provide.
    #[error("module {digest} has imports the host does not provide: {message}")]
    Link { digest: String, message: String },
    /// The module is not a command: no `_start` (preview 1) or `wasi:cli/run` (preview 2).
    #[error("module {digest} is not a WASI command: {message}")]
    NotCommand { digest: String, message: String },
    /// The blocking task compiling the module died.
    #[error("compiling module {digest} was interrupted: {message}")]
    Task { digest: String, message: String },
}
