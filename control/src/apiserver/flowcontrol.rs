//! Priority and fairness for API requests: a reduced form of Kubernetes' API Priority and
//! Fairness with a built-in configuration (no `flowcontrol.apiserver.k8s.io` objects).
//!
//! Why: a request's latency on a busy server is mostly time spent behind other requests.
//! When a client floods the server — sixteen scripts creating pods as fast as they can —
//! everything else waits behind the flood, including the node agents' status writes and
//! token requests that turn the flood's pods into running ones. Admitting more of the
//! flood at once than the machine has cores adds no throughput, only queueing, so its
//! requests hold a *seat* while they execute, and there are few seats:
//!
//! - **system**: the node agents (`system:nodes`), the scheduler and controller manager
//!   (`system:kube-*`), and `kube-system` service accounts: the work that finishes what
//!   was already admitted. Never queued. (Giving this level a few seats of its own, as
//!   Kubernetes does, was measured to be far worse here: its requests mostly wait on
//!   etcd, so a few seats starve the nodes instead of protecting them.)
//! - **workload**: everyone else, the cluster admin included (Kubernetes exempts
//!   `system:masters`; here an admin's script is exactly the flood that must not starve
//!   the nodes). `--max-workload-requests-inflight` seats; queued per *flow* (one per
//!   user) and served round-robin across flows, so one busy user cannot starve another.
//!   A request that would wait beyond [`WORKLOAD_QUEUE_LIMIT`] others of its flow, or
//!   longer than [`WORKLOAD_WAIT_LIMIT`], gets 429 TooManyRequests with `Retry-After`,
//!   which kubectl and client-go retry.
//!
//! While the system level has been idle for [`LEND_AFTER`] (no node, scheduler or
//! controller request in flight or just finished), the workload level borrows up to
//! [`BORROWED_SEATS`] seats in all, as Kubernetes' levels borrow each other's unused
//! seats: the few seats exist to keep a flood from starving the nodes, and with no node
//! work to protect they only cost throughput (etcd commits more concurrent writes per
//! fsync). New requests go back to the nominal seats as soon as system work appears.
//!
//! Long-running requests (watches, logs, exec, attach, port-forward, proxy) hold no seat,
//! as in Kubernetes.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use super::authn::UserInfo;

/// Requests of one workload flow that may wait at once; more are refused.
pub const WORKLOAD_QUEUE_LIMIT: usize = 512;
/// The longest a workload request waits for a seat before it is refused.
pub const WORKLOAD_WAIT_LIMIT: Duration = Duration::from_secs(15);
/// What a refused request is told to wait before trying again (`Retry-After`).
pub const RETRY_AFTER_SECONDS: u32 = 1;
/// How long the system level must have been idle before the workload level borrows.
pub const LEND_AFTER: Duration = Duration::from_millis(500);
/// The most workload requests executing at once while borrowing.
pub const BORROWED_SEATS: usize = 32;

/// Workload seats when `--max-workload-requests-inflight` is not given: two per core
/// keeps the cores busy while some requests wait on etcd, and no more.
pub fn default_seats() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() * 2)
        .unwrap_or(4)
        .max(2)
}

/// A priority level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    System,
    Workload,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::System => "system",
            Level::Workload => "workload",
        }
    }

    /// The level of a user's requests.
    pub fn of(user: &UserInfo) -> Level {
        let system_group = user.groups.iter().any(|g| g == "system:nodes");
        let component = user.name.starts_with("system:kube-")
            || user.name.starts_with("system:node:")
            || user.name.starts_with("system:serviceaccount:kube-system:");
        if system_group || component {
            Level::System
        } else {
            Level::Workload
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("too many requests of this user are waiting")]
    QueueFull,
    #[error("the request waited too long for its turn")]
    TimedOut,
}

/// The seats of every level; shared by all connections.
pub struct FlowControl {
    system: Arc<Seats>,
    workload: Arc<Seats>,
}

impl FlowControl {
    /// `seats` workload requests execute at once; 0 means no limit. System requests are
    /// never limited.
    pub fn new(seats: usize) -> FlowControl {
        let system = Seats::new(0, None, None, None);
        let borrow = (seats > 0).then(|| Borrow {
            seats: BORROWED_SEATS.max(seats),
            lender: system.clone(),
        });
        FlowControl {
            workload: Seats::new(
                seats,
                Some(WORKLOAD_QUEUE_LIMIT),
                Some(WORKLOAD_WAIT_LIMIT),
                borrow,
            ),
            system,
        }
    }

    /// Waits for a seat for `user`'s request; the seat is held until dropped.
    pub async fn admit(&self, user: &UserInfo) -> Result<Seat, Rejected> {
        let level = Level::of(user);
        let seats = match level {
            Level::System => &self.system,
            Level::Workload => &self.workload,
        };
        let admitted = seats.admit(&user.name).await;
        if let Err(why) = admitted {
            tracing::debug!(user = %user.name, level = level.name(), reason = %why, "request refused by flow control");
            seats.lock().rejected += 1;
        }
        admitted
    }

    /// Each level's state now, for metrics.
    pub fn load(&self) -> [(Level, Load); 2] {
        let of = |s: &Seats| {
            let current = if s.limit == 0 { 0 } else { s.limit_now() };
            let inner = s.lock();
            Load {
                executing: inner.executing,
                waiting: inner.waiting,
                rejected: inner.rejected,
                seats: s.limit,
                current_seats: current,
            }
        };
        [
            (Level::System, of(&self.system)),
            (Level::Workload, of(&self.workload)),
        ]
    }

    /// The levels' gauges and counters in the Prometheus text format, under Kubernetes'
    /// metric names.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write;
        let load = self.load();
        let metrics: [Metric; 5] = [
            (
                "apiserver_flowcontrol_current_executing_requests",
                "gauge",
                |l| l.executing as u64,
            ),
            (
                "apiserver_flowcontrol_current_inqueue_requests",
                "gauge",
                |l| l.waiting as u64,
            ),
            (
                "apiserver_flowcontrol_rejected_requests_total",
                "counter",
                |l| l.rejected,
            ),
            ("apiserver_flowcontrol_nominal_limit_seats", "gauge", |l| {
                l.seats as u64
            }),
            ("apiserver_flowcontrol_current_limit_seats", "gauge", |l| {
                l.current_seats as u64
            }),
        ];
        let mut out = String::new();
        for (metric, kind, value) in metrics {
            let _ = writeln!(out, "# TYPE {metric} {kind}");
            for (level, l) in &load {
                let _ = writeln!(
                    out,
                    "{metric}{{priority_level=\"{}\"}} {}",
                    level.name(),
                    value(l)
                );
            }
        }
        out
    }
}

/// A metric's name, Prometheus type, and value for one level.
type Metric = (&'static str, &'static str, fn(&Load) -> u64);

/// A level's state at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    pub executing: usize,
    pub waiting: usize,
    /// Requests refused so far.
    pub rejected: u64,
    /// The seat limit; 0 for none.
    pub seats: usize,
    /// The limit now, with borrowed seats; 0 for none.
    pub current_seats: usize,
}

/// One level's seats and queues.
struct Seats {
    /// 0: unlimited.
    limit: usize,
    queue_limit: Option<usize>,
    wait_limit: Option<Duration>,
    /// More seats this level may use while another is idle.
    borrow: Option<Borrow>,
    inner: Mutex<Inner>,
}

/// Seats a level borrows from an idle one.
struct Borrow {
    /// The limit while borrowing.
    seats: usize,
    /// The level whose idleness lends them.
    lender: Arc<Seats>,
}

#[derive(Default)]
struct Inner {
    executing: usize,
    waiting: usize,
    /// Requests refused so far.
    rejected: u64,
    next_id: u64,
    /// When a request of this level last started or finished.
    last_active: Option<tokio::time::Instant>,
    /// Each flow's waiting requests, oldest first.
    queues: HashMap<String, VecDeque<(u64, oneshot::Sender<()>)>>,
    /// Flows with waiting requests, in the order they are served.
    turns: VecDeque<String>,
}

impl Seats {
    fn new(
        limit: usize,
        queue_limit: Option<usize>,
        wait_limit: Option<Duration>,
        borrow: Option<Borrow>,
    ) -> Arc<Seats> {
        Arc::new(Seats {
            limit,
            queue_limit,
            wait_limit,
            borrow,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// The seats usable now: the nominal ones, or the borrowed limit while the lender
    /// has been idle for [`LEND_AFTER`]. (Lock order: a borrower's lock, then its
    /// lender's; a lender never takes a borrower's.)
    fn limit_now(&self) -> usize {
        let Some(borrow) = &self.borrow else {
            return self.limit;
        };
        let lender = borrow.lender.lock();
        let idle =
            lender.executing == 0 && lender.last_active.is_none_or(|t| t.elapsed() >= LEND_AFTER);
        if idle {
            borrow.seats
        } else {
            self.limit
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn admit(self: &Arc<Self>, flow: &str) -> Result<Seat, Rejected> {
        let mut waiter = {
            let mut inner = self.lock();
            if self.limit == 0 {
                inner.executing += 1;
                inner.last_active = Some(tokio::time::Instant::now());
                return Ok(self.seat());
            }
            if inner.executing < self.limit_now() && inner.waiting == 0 {
                inner.executing += 1;
                return Ok(self.seat());
            }
            let queue_len = inner.queues.get(flow).map_or(0, VecDeque::len);
            if self.queue_limit.is_some_and(|limit| queue_len >= limit) {
                return Err(Rejected::QueueFull);
            }
            let id = inner.next_id;
            inner.next_id += 1;
            let (tx, rx) = oneshot::channel();
            if queue_len == 0 {
                inner.turns.push_back(flow.to_string());
            }
            inner
                .queues
                .entry(flow.to_string())
                .or_default()
                .push_back((id, tx));
            inner.waiting += 1;
            Waiter {
                seats: self.clone(),
                flow: flow.to_string(),
                id,
                granted: rx,
                settled: false,
            }
        };
        let outcome = match self.wait_limit {
            Some(limit) => tokio::time::timeout(limit, &mut waiter.granted).await.ok(),
            None => Some((&mut waiter.granted).await),
        };
        waiter.settled = true;
        if let Some(Ok(())) = outcome {
            return Ok(self.seat());
        }
        // Timed out (a sender is only dropped unsent by `remove`, which only the waiter
        // calls, so there is no other way here).
        let mut inner = self.lock();
        if inner.remove(flow, waiter.id) {
            return Err(Rejected::TimedOut);
        }
        drop(inner);
        // Not queued any more: a release handed this waiter a seat (under the lock, so
        // the hand-over is complete) just as the wait ran out.
        match waiter.granted.try_recv() {
            Ok(()) => Ok(self.seat()),
            Err(_) => Err(Rejected::TimedOut),
        }
    }

    fn seat(self: &Arc<Self>) -> Seat {
        Seat {
            seats: Some(self.clone()),
        }
    }

    /// A seat is free: the next flows in turn get the seats now usable, or they stay
    /// free.
    fn release(&self) {
        let mut inner = self.lock();
        inner.executing -= 1;
        let limit = self.limit_now();
        while inner.executing < limit && self.grant_next(&mut inner) {}
    }

    /// Hands a seat to the next waiter in turn; false when nobody waits.
    fn grant_next(&self, inner: &mut Inner) -> bool {
        while let Some(flow) = inner.turns.pop_front() {
            let Some(queue) = inner.queues.get_mut(&flow) else {
                continue;
            };
            let Some((_, tx)) = queue.pop_front() else {
                inner.queues.remove(&flow);
                continue;
            };
            if queue.is_empty() {
                inner.queues.remove(&flow);
            } else {
                inner.turns.push_back(flow);
            }
            inner.waiting -= 1;
            if tx.send(()).is_ok() {
                inner.executing += 1;
                return true;
            }
            // That waiter is gone (its client hung up): the next one gets the seat.
        }
        false
    }
}

impl Inner {
    /// Takes a waiter out of its flow's queue; false if it is not there (handed a seat).
    fn remove(&mut self, flow: &str, id: u64) -> bool {
        let Some(queue) = self.queues.get_mut(flow) else {
            return false;
        };
        let Some(at) = queue.iter().position(|(i, _)| *i == id) else {
            return false;
        };
        queue.remove(at);
        if queue.is_empty() {
            self.queues.remove(flow);
            self.turns.retain(|f| f != flow);
        }
        self.waiting -= 1;
        true
    }
}

/// A request waiting in a queue. If its request goes away while it waits (the client
/// hung up), dropping it takes it out of the queue — or, when a seat was handed to it at
/// that very moment, hands the seat on, so no seat is lost.
struct Waiter {
    seats: Arc<Seats>,
    flow: String,
    id: u64,
    granted: oneshot::Receiver<()>,
    /// The wait ended normally and `admit` dealt with the outcome.
    settled: bool,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut inner = self.seats.lock();
        if inner.remove(&self.flow, self.id) {
            return;
        }
        drop(inner);
        if self.granted.try_recv().is_ok() {
            self.seats.release();
        }
    }
}

/// A request's seat; freed (and handed on) when dropped.
pub struct Seat {
    seats: Option<Arc<Seats>>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(seats) = self.seats.take() {
            if seats.limit > 0 {
                seats.release();
            } else {
                let mut inner = seats.lock();
                inner.executing -= 1;
                inner.last_active = Some(tokio::time::Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.to_string(),
            uid: String::new(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn components_and_nodes_are_system_and_everyone_else_is_workload() {
        let system = [
            user("system:node:n1", &["system:nodes"]),
            user("system:kube-scheduler", &[]),
            user("system:kube-controller-manager", &[]),
            user(
                "system:serviceaccount:kube-system:replicaset-controller",
                &[],
            ),
        ];
        for u in &system {
            assert_eq!(Level::of(u), Level::System, "{}", u.name);
        }
        let workload = [
            user("admin", &["system:masters"]),
            user("jane", &["devs"]),
            user("system:serviceaccount:default:deployer", &[]),
        ];
        for u in &workload {
            assert_eq!(Level::of(u), Level::Workload, "{}", u.name);
        }
    }

    /// A request of `flow` waiting for a seat in a task of its own.
    fn spawn_admit(
        seats: &Arc<Seats>,
        flow: &'static str,
    ) -> tokio::task::JoinHandle<Result<(), Rejected>> {
        let seats = seats.clone();
        tokio::spawn(async move { seats.admit(flow).await.map(|_| ()) })
    }

    /// Lets spawned tasks run until they block.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn seats_bound_the_requests_executing_at_once() {
        let seats = Seats::new(2, None, None, None);
        let a = seats.admit("u").await.expect("a");
        let _b = seats.admit("u").await.expect("b");
        let waiting = spawn_admit(&seats, "u");
        settle().await;
        assert!(!waiting.is_finished(), "a third request must wait");
        assert_eq!(seats.lock().waiting, 1);
        drop(a);
        waiting
            .await
            .expect("task")
            .expect("admitted once a seat is free");
        assert_eq!(seats.lock().executing, 1, "b still holds its seat");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_system_level_lends_seats_and_busy_takes_them_back() {
        let lender = Seats::new(0, None, None, None);
        let seats = Seats::new(
            1,
            None,
            None,
            Some(Borrow {
                seats: 3,
                lender: lender.clone(),
            }),
        );
        // Nothing of the system level ran yet: three at once.
        let a = seats.admit("u").await.expect("a");
        let b = seats.admit("u").await.expect("b");
        let c = seats.admit("u").await.expect("c");
        let waiting = spawn_admit(&seats, "u");
        settle().await;
        assert!(!waiting.is_finished(), "the borrowed limit holds too");

        // A node request: back to the one nominal seat.
        let node = lender.admit("system:node:n1").await.expect("system");
        drop(a);
        drop(b);
        settle().await;
        assert!(!waiting.is_finished(), "2 executing is over the nominal 1");
        drop(c);
        waiting
            .await
            .expect("task")
            .expect("admitted at the nominal limit");

        // Idle again once the node request is done and LEND_AFTER has passed.
        drop(node);
        let d = seats.admit("u").await.expect("d");
        let early = spawn_admit(&seats, "u");
        settle().await;
        assert!(!early.is_finished(), "the system level was busy just now");
        drop(d);
        early.await.expect("task").expect("admitted");
        tokio::time::advance(LEND_AFTER).await;
        let _e = seats.admit("u").await.expect("e");
        let _f = seats.admit("u").await.expect("f: borrowed again");
    }

    #[tokio::test]
    async fn flows_take_turns() {
        let seats = Seats::new(1, None, None, None);
        let first = seats.admit("busy").await.expect("first");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        let mut spawn = |flow: &'static str, label: String| {
            let seats = seats.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let _seat = seats.admit(flow).await.expect("admitted");
                order.lock().expect("lock").push(label);
            }));
        };
        for i in 0..3 {
            spawn("busy", format!("busy{i}"));
            settle().await;
        }
        spawn("quiet", "quiet".to_string());
        settle().await;
        drop(first);
        for t in tasks {
            t.await.expect("task");
        }
        let order = order.lock().expect("lock").clone();
        assert_eq!(order, ["busy0", "quiet", "busy1", "busy2"]);
    }

    #[tokio::test]
    async fn a_full_queue_and_a_long_wait_are_refused() {
        let seats = Seats::new(1, Some(1), Some(Duration::from_millis(50)), None);
        let _held = seats.admit("u").await.expect("held");
        let queued = spawn_admit(&seats, "u");
        settle().await;
        assert_eq!(
            seats.admit("u").await.err(),
            Some(Rejected::QueueFull),
            "the flow's queue holds one"
        );
        assert_eq!(
            queued.await.expect("task").err(),
            Some(Rejected::TimedOut),
            "nobody freed the seat"
        );
        let inner = seats.lock();
        assert_eq!((inner.executing, inner.waiting), (1, 0));
        assert!(inner.queues.is_empty() && inner.turns.is_empty());
    }

    #[tokio::test]
    async fn a_waiter_that_went_away_does_not_keep_a_seat() {
        let seats = Seats::new(1, None, None, None);
        let held = seats.admit("u").await.expect("held");
        let gone = spawn_admit(&seats, "u");
        settle().await;
        gone.abort();
        let _ = gone.await;
        let next = spawn_admit(&seats, "v");
        settle().await;
        drop(held);
        next.await
            .expect("task")
            .expect("the seat skips the waiter that left");
        assert_eq!(seats.lock().executing, 0);
    }

    #[tokio::test]
    async fn a_seat_handed_to_a_request_that_just_went_away_is_not_lost() {
        let seats = Seats::new(1, None, None, None);
        let held = seats.admit("u").await.expect("held");
        let gone = spawn_admit(&seats, "u");
        settle().await;
        // The release hands the seat to the waiter; it is cancelled before it runs.
        drop(held);
        gone.abort();
        let _ = gone.await;
        assert_eq!(seats.lock().executing, 0, "the seat went back");
        let _again = seats.admit("v").await.expect("the seat is free again");
    }

    #[tokio::test]
    async fn zero_seats_means_no_limit() {
        let fc = FlowControl::new(0);
        let admin = user("admin", &["system:masters"]);
        let mut held = Vec::new();
        for _ in 0..100 {
            held.push(fc.admit(&admin).await.expect("never waits"));
        }
        let [_, (level, load)] = fc.load();
        assert_eq!(level, Level::Workload);
        assert_eq!((load.executing, load.waiting, load.seats), (100, 0, 0));
        held.clear();
        assert_eq!(fc.load()[1].1.executing, 0);
    }
}
