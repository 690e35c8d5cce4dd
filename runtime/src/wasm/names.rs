//! Name lookups of preview 2 guests: the cluster's names first, then the host's resolver.
//!
//! Pods find Services by name (`http://web:8080`, `web.shop.svc.cluster.local`); on
//! Kubernetes a cluster DNS server answers those. Here a guest's lookups never leave the
//! agent: wasmtime-wasi's `wasi:sockets/ip-name-lookup` interface (the one function and
//! the stream resource it returns) is shadowed in the component linker by this module's
//! version, which asks the instance's [`Names`] (the pod's view of the cluster, given by
//! the agent) and hands every name it does not know to the host's resolver, as
//! wasmtime-wasi would have.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, ToSocketAddrs};
use std::pin::Pin;
use std::task::{Context, Poll};

use wasmtime::component::{Linker, Resource, ResourceType};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddress, Network};
use wasmtime_wasi::p2::{subscribe, DynPollable, Pollable};

use super::program::P2State;

/// The interface wasmtime-wasi 48 registers; guests importing earlier 0.2.x versions
/// resolve to it.
const LOOKUP: &str = "wasi:sockets/ip-name-lookup@0.2.12";

/// What a pod's lookup of a name comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A cluster name with these addresses (none: the name exists but has no address,
    /// such as a headless Service without ready endpoints).
    Addresses(Vec<IpAddr>),
    /// Ask the host's resolver for this name (the name itself, or the target of an
    /// ExternalName Service).
    Host(String),
}

/// A pod's view of the cluster's names: Services in its namespace and others, with the
/// pod's search path applied.
pub trait Names: Send + Sync + fmt::Debug {
    fn lookup(&self, name: &str) -> Lookup;
}

/// The stream `resolve-addresses` returns: the addresses, or the host lookup that will
/// give them.
pub(crate) struct NameStream(State);

enum State {
    Pending(tokio::task::JoinHandle<Result<Vec<IpAddr>, ErrorCode>>),
    Done(Result<std::vec::IntoIter<IpAddr>, ErrorCode>),
}

impl NameStream {
    fn done(result: Result<Vec<IpAddr>, ErrorCode>) -> Self {
        NameStream(State::Done(result.map(Vec::into_iter)))
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let State::Pending(task) = &mut self.0 {
            let Poll::Ready(joined) = Pin::new(task).poll(cx) else {
                return Poll::Pending;
            };
            let result = joined.unwrap_or(Err(ErrorCode::TemporaryResolverFailure));
            self.0 = State::Done(result.map(Vec::into_iter));
        }
        Poll::Ready(())
    }

    /// The next address, `Ok(None)` at the end; `Err(WouldBlock)` while the host's
    /// resolver has not answered.
    fn next(&mut self) -> Result<Option<IpAddr>, ErrorCode> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let _ = self.poll(&mut cx);
        match &mut self.0 {
            State::Pending(_) => Err(ErrorCode::WouldBlock),
            State::Done(Ok(ips)) => Ok(ips.next()),
            State::Done(Err(code)) => Err(*code),
        }
    }
}

impl Drop for NameStream {
    fn drop(&mut self) {
        // A guest that gave up on a name does not keep the host's lookup running.
        if let State::Pending(task) = &self.0 {
            task.abort();
        }
    }
}

impl Pollable for NameStream {
    fn ready<'a, 'b>(&'a mut self) -> Pin<Box<dyn Future<Output = ()> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(std::future::poll_fn(|cx| self.poll(cx)))
    }
}

/// The addresses of `name` as wasmtime-wasi finds them: an IP literal is itself; a
/// domain goes to the host's resolver.
async fn host_lookup(name: String) -> Result<Vec<IpAddr>, ErrorCode> {
    let addrs = tokio::net::lookup_host((name.as_str(), 0))
        .await
        .map_err(|e| {
            tracing::debug!(%name, error = %e, "name lookup failed");
            ErrorCode::NameUnresolvable
        })?;
    Ok(addrs.map(|a| a.ip().to_canonical()).collect())
}

/// Whether `name` can be looked up at all: a DNS name of letters, digits, `-`, `_` and
/// dots (a trailing one allowed), as a resolver would take it.
fn is_domain(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Starts looking `name` up for an instance whose cluster names are `names`.
fn start(names: Option<&dyn Names>, name: &str) -> Result<NameStream, ErrorCode> {
    // IPv6 literals may come without brackets.
    let literal = name.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(NameStream::done(Ok(vec![ip])));
    }
    if !is_domain(name) {
        return Err(ErrorCode::InvalidArgument);
    }
    let host_name = match names.map(|n| n.lookup(name)) {
        Some(Lookup::Addresses(ips)) if ips.is_empty() => return Err(ErrorCode::NameUnresolvable),
        Some(Lookup::Addresses(ips)) => return Ok(NameStream::done(Ok(ips))),
        Some(Lookup::Host(target)) => target,
        None => name.to_string(),
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => Ok(NameStream(State::Pending(rt.spawn(host_lookup(host_name))))),
        // Not on a runtime (no test or agent path does this): resolve on the spot.
        Err(_) => Ok(NameStream::done(
            (host_name.as_str(), 0)
                .to_socket_addrs()
                .map(|a| a.map(|a| a.ip().to_canonical()).collect())
                .map_err(|_| ErrorCode::NameUnresolvable),
        )),
    }
}

/// Replaces wasmtime-wasi's `wasi:sockets/ip-name-lookup` with this module's (see the
/// module docs). Fails if the interface's function was not defined before: shadowing a
/// name wasmtime-wasi does not use would silently add a function no guest calls.
pub(crate) fn shadow_name_lookup(linker: &mut Linker<P2State>) -> wasmtime::Result<()> {
    linker.allow_shadowing(false);
    let probe = linker
        .instance(LOOKUP)?
        .func_wrap("resolve-addresses", |_, (): ()| Ok(()));
    if probe.is_ok() {
        return Err(wasmtime::format_err!(
            "{LOOKUP} has no resolve-addresses to shadow: wasmtime-wasi's sockets version \
             changed"
        ));
    }
    linker.allow_shadowing(true);
    let mut lookup = linker.instance(LOOKUP)?;
    lookup.resource(
        "resolve-address-stream",
        ResourceType::host::<NameStream>(),
        |mut store, rep| {
            store
                .data_mut()
                .table()
                .delete(Resource::<NameStream>::new_own(rep))?;
            Ok(())
        },
    )?;
    lookup.func_wrap(
        "resolve-addresses",
        |mut store, (network, name): (Resource<Network>, String)| {
            let state = store.data_mut();
            // The network handle is the capability to look names up: it must be valid.
            state.table().get(&network)?;
            if !state.name_lookups {
                return Ok((Err(ErrorCode::PermanentResolverFailure),));
            }
            let names = state.names.clone();
            let stream = match start(names.as_deref(), &name) {
                Ok(stream) => stream,
                Err(code) => return Ok((Err(code),)),
            };
            Ok((Ok(state.table().push(stream)?),))
        },
    )?;
    lookup.func_wrap(
        "[method]resolve-address-stream.resolve-next-address",
        |mut store, (this,): (Resource<NameStream>,)| {
            let stream = store.data_mut().table().get_mut(&this)?;
            Ok((stream.next().map(|ip| ip.map(IpAddress::from)),))
        },
    )?;
    lookup.func_wrap(
        "[method]resolve-address-stream.subscribe",
        |mut store, (this,): (Resource<NameStream>,)| {
            let pollable: Resource<DynPollable> = subscribe(store.data_mut().table(), this)?;
            Ok((pollable,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}
