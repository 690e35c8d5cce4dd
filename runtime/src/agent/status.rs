//! What the agent knows about a pod's containers, and the `PodStatus` Kubernetes shows
//! for it.
//!
//! The pod worker changes a [`PodState`] as things happen (a pull fails, a container
//! starts or exits); [`PodState::to_status`] derives everything else — phase,
//! conditions, container statuses — the way the kubelet does, so `kubectl get pods`
//! reads `ContainerCreating`, `CrashLoopBackOff`, `Completed` and so on.

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

/// How the pod's containers restart, from `spec.restartPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn of(pod: &Pod) -> RestartPolicy {
        match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
            Some("Never") => RestartPolicy::Never,
            Some("OnFailure") => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        }
    }

    /// Whether a container that exited with `exit_code` runs again.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

/// How one run of a container ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Terminated {
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`, `StartError`.
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: DateTime<Utc>,
}

/// A container's current state, as in `containerStatuses[].state`.
#[derive(Debug, Clone, PartialEq)]
pub enum ContainerState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: DateTime<Utc>,
    },
    Terminated(Terminated),
}

/// One container (init or regular) as the agent tracks it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    /// The module's digest reference once pulled.
    pub image_id: String,
    /// `wasmtime://<pod uid>/<container>/<run>` once a run has started.
    pub container_id: String,
    pub restart_count: i32,
    pub state: ContainerState,
    pub last_state: Option<Terminated>,
    /// Passes its readiness probe (or has none) and has started: drives the pod's
    /// Ready and ContainersReady conditions.
    pub ready: bool,
    /// Its startup probe succeeded (or it has none); shown as `started` while running.
    /// Liveness and readiness probes wait for it.
    pub started: bool,
    /// It has a readiness probe: once it runs, its first probe result is the next news.
    pub awaits_readiness: bool,
}

impl ContainerRecord {
    fn new(name: &str, image: &str) -> Self {
        ContainerRecord {
            name: name.to_string(),
            image: image.to_string(),
            image_id: String::new(),
            container_id: String::new(),
            restart_count: 0,
            state: ContainerState::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            },
            last_state: None,
            ready: false,
            started: false,
            awaits_readiness: false,
        }
    }

    /// Records the end of a run: the state becomes Terminated.
    pub fn terminated(&mut self, t: Terminated) {
        self.state = ContainerState::Terminated(t);
        self.ready = false;
        self.started = false;
    }

    /// Records a new run starting: the previous termination becomes `lastState`. The
    /// run counts as started and not ready; a container with a startup or readiness
    /// probe changes that as its probes say.
    pub fn running(&mut self, started_at: DateTime<Utc>) {
        if let ContainerState::Terminated(t) = &self.state {
            self.last_state = Some(t.clone());
        }
        self.state = ContainerState::Running { started_at };
        self.started = true;
        self.ready = false;
    }

    /// Waiting for a reason (a pull, a back-off); a termination shown so far moves to
    /// `lastState`, as the kubelet shows a container in CrashLoopBackOff.
    pub fn waiting(&mut self, reason: &str, message: Option<String>) {
        if let ContainerState::Terminated(t) = &self.state {
            self.last_state = Some(t.clone());
        }
        self.state = ContainerState::Waiting {
            reason: reason.to_string(),
            message,
        };
        self.ready = false;
        self.started = false;
    }

    /// Whether a run is going on now.
    pub fn is_running(&self) -> bool {
        matches!(self.state, ContainerState::Running { .. })
    }

    fn to_json(&self) -> Value {
        let state = match &self.state {
            ContainerState::Waiting { reason, message } => {
                let mut w = json!({"reason": reason});
                if let Some(m) = message {
                    w["message"] = json!(m);
                }
                json!({"waiting": w})
            }
            ContainerState::Running { started_at } => {
                json!({"running": {"startedAt": time(started_at)}})
            }
            ContainerState::Terminated(t) => json!({"terminated": terminated_json(t)}),
        };
        let last = match &self.last_state {
            Some(t) => json!({"terminated": terminated_json(t)}),
            None => json!({}),
        };
        json!({
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "containerID": (!self.container_id.is_empty()).then_some(&self.container_id),
            "restartCount": self.restart_count,
            "ready": self.ready,
            "started": self.is_running() && self.started,
            "state": state,
            "lastState": last,
        })
    }
}

fn terminated_json(t: &Terminated) -> Value {
    let mut v = json!({
        "exitCode": t.exit_code,
        "reason": t.reason,
        "finishedAt": time(&t.finished_at),
    });
    if let Some(m) = &t.message {
        v["message"] = json!(m);
    }
    if let Some(s) = &t.started_at {
        v["startedAt"] = json!(time(s));
    }
    v
}

fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Everything the agent knows about one pod's progress.
#[derive(Debug, Clone, PartialEq)]
pub struct PodState {
    pub host_ip: String,
    pub pod_ip: String,
    pub start_time: DateTime<Utc>,
    pub init: Vec<ContainerRecord>,
    pub containers: Vec<ContainerRecord>,
    /// All init containers completed.
    pub initialized: bool,
    /// The pod ended for good (restartPolicy said no more runs): Succeeded or Failed.
    pub finished: bool,
    /// A pod-level failure outside any container (e.g. a volume that cannot be set up):
    /// (reason, message) shown while the pod stays Pending.
    pub pod_problem: Option<(String, String)>,
    /// The agent evicted the pod, for this reason (an emptyDir over its limit): the
    /// pod is Failed with reason Evicted and its containers were stopped.
    pub evicted: Option<String>,
}

impl PodState {
    /// Whether the pod's first status is worth writing now: every container is past
    /// being created (it started — and, with a readiness probe, got its first success —
    /// or ended, or waits behind init containers), or something went wrong (a container
    /// waits for a reason other than being created, a pod-level problem), or the pod
    /// finished. Until then its status says little more than "being created", and
    /// writing it would cost a second PATCH for nothing.
    pub fn is_settled(&self) -> bool {
        let mut all = self.init.iter().chain(&self.containers);
        let trouble = |c: &ContainerRecord| {
            matches!(&c.state, ContainerState::Waiting { reason, .. }
                if reason != "ContainerCreating" && reason != "PodInitializing")
        };
        let creating = |c: &ContainerRecord| match &c.state {
            ContainerState::Waiting { reason, .. } => reason == "ContainerCreating",
            ContainerState::Running { .. } => c.awaits_readiness && !c.ready,
            ContainerState::Terminated(_) => false,
        };
        self.finished
            || self.evicted.is_some()
            || self.pod_problem.is_some()
            || self.init.iter().chain(&self.containers).any(trouble)
            || !all.any(creating)
    }

    /// The state of a pod the agent starts working on. Restart counts and the last
    /// terminations are carried over from an earlier status (an agent restart must not
    /// reset them).
    pub fn new(pod: &Pod, host_ip: &str, pod_ip: &str, now: DateTime<Utc>) -> PodState {
        let spec = pod.spec.clone().unwrap_or_default();
        let old = pod.status.clone().unwrap_or_default();
        let carry =
            |records: &mut Vec<ContainerRecord>,
             old: &Option<Vec<k8s_openapi::api::core::v1::ContainerStatus>>| {
                for r in records.iter_mut() {
                    let Some(o) = old.iter().flatten().find(|o| o.name == r.name) else {
                        continue;
                    };
                    r.restart_count = o.restart_count;
                    // The container ran under an earlier agent, whose instances died
                    // with it: the run this agent starts is a restart, as after a node
                    // reboot.
                    let ran = o
                        .state
                        .as_ref()
                        .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                        || o.last_state
                            .as_ref()
                            .is_some_and(|s| s.terminated.is_some());
                    if ran {
                        r.restart_count += 1;
                        r.last_state = Some(Terminated {
                            exit_code: 255,
                            reason: "Unknown".into(),
                            message: Some(
                                "the node agent restarted, stopping the container".into(),
                            ),
                            started_at: None,
                            finished_at: now,
                        });
                    }
                }
            };
        let mut init: Vec<ContainerRecord> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| ContainerRecord::new(&c.name, c.image.as_deref().unwrap_or("")))
            .collect();
        for r in &mut init {
            r.state = ContainerState::Waiting {
                reason: "PodInitializing".into(),
                message: None,
            };
        }
        let mut containers: Vec<ContainerRecord> = spec
            .containers
            .iter()
            .map(|c| ContainerRecord {
                awaits_readiness: c.readiness_probe.is_some(),
                ..ContainerRecord::new(&c.name, c.image.as_deref().unwrap_or(""))
            })
            .collect();
        if !init.is_empty() {
            for r in &mut containers {
                r.state = ContainerState::Waiting {
                    reason: "PodInitializing".into(),
                    message: None,
                };
            }
            init[0].state = ContainerState::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            };
        }
        carry(&mut init, &old.init_container_statuses);
        carry(&mut containers, &old.container_statuses);
        let start_time = old
            .start_time
            .and_then(|t| {
                DateTime::<Utc>::from_timestamp(
                    t.0.as_second(),
                    t.0.subsec_nanosecond().max(0) as u32,
                )
            })
            .unwrap_or(now);
        PodState {
            host_ip: host_ip.to_string(),
            pod_ip: pod_ip.to_string(),
            start_time,
            initialized: init.is_empty(),
            init,
            containers,
            finished: false,
            pod_problem: None,
            evicted: None,
        }
    }

    /// Once an evicted pod's containers have stopped: each that was running ends as a
    /// killed container does (137, Error), each that never ran as the kubelet reports
    /// a container it cannot find when the pod ends.
    pub fn settle_eviction(&mut self, now: DateTime<Utc>) {
        if self.evicted.is_none() {
            return;
        }
        for c in self.init.iter_mut().chain(self.containers.iter_mut()) {
            let ended = match &c.state {
                ContainerState::Terminated(_) => continue,
                ContainerState::Running { started_at } => Terminated {
                    exit_code: 137,
                    reason: "Error".into(),
                    message: None,
                    started_at: Some(*started_at),
                    finished_at: now,
                },
                ContainerState::Waiting { .. } => Terminated {
                    exit_code: 137,
                    reason: "ContainerStatusUnknown".into(),
                    message: Some(
                        "The container could not be located when the pod was terminated".into(),
                    ),
                    started_at: None,
                    finished_at: now,
                },
            };
            c.terminated(ended);
        }
    }

    pub fn container_mut(&mut self, name: &str) -> Option<&mut ContainerRecord> {
        self.containers
            .iter_mut()
            .chain(self.init.iter_mut())
            .find(|c| c.name == name)
    }

    /// `status.phase`, as the kubelet computes it.
    pub fn phase(&self, policy: RestartPolicy) -> &'static str {
        if self.evicted.is_some() {
            return "Failed";
        }
        let init_failed = self.init.iter().any(|c| {
            matches!(&c.state, ContainerState::Terminated(t) if t.exit_code != 0)
                && policy == RestartPolicy::Never
        });
        if init_failed {
            return "Failed";
        }
        if !self.initialized {
            return "Pending";
        }
        let running = self.containers.iter().filter(|c| c.is_running()).count();
        let terminated: Vec<&Terminated> = self
            .containers
            .iter()
            .filter_map(|c| match &c.state {
                ContainerState::Terminated(t) => Some(t),
                _ => None,
            })
            .collect();
        let waiting_first = self.containers.iter().any(|c| {
            matches!(&c.state, ContainerState::Waiting { .. })
                && c.last_state.is_none()
                && c.restart_count == 0
        });
        if self.finished && terminated.len() == self.containers.len() {
            return if terminated.iter().all(|t| t.exit_code == 0) {
                "Succeeded"
            } else {
                "Failed"
            };
        }
        if waiting_first && running == 0 {
            return "Pending";
        }
        "Running"
    }

    /// The whole `status` object (to be written through `pods/status`).
    pub fn to_status(&self, policy: RestartPolicy, now: DateTime<Utc>) -> Value {
        let phase = self.phase(policy);
        let ready = phase == "Running" && self.containers.iter().all(|c| c.ready);
        let cond = |type_: &str, ok: bool, reason: Option<&str>, message: Option<String>| {
            let mut c = json!({
                "type": type_,
                "status": if ok { "True" } else { "False" },
                "lastProbeTime": null,
                "lastTransitionTime": time(&now),
            });
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            if let Some(m) = message {
                c["message"] = json!(m);
            }
            c
        };
        let unready: Vec<&str> = self
            .containers
            .iter()
            .filter(|c| !c.ready)
            .map(|c| c.name.as_str())
            .collect();
        let unready_msg = (!unready.is_empty())
            .then(|| format!("containers with unready status: [{}]", unready.join(" ")));
        let succeeded_or_failed = matches!(phase, "Succeeded" | "Failed");
        let unready_reason = if succeeded_or_failed {
            "PodCompleted"
        } else {
            "ContainersNotReady"
        };
        let uninit: Vec<&str> = self
            .init
            .iter()
            .filter(|c| !matches!(&c.state, ContainerState::Terminated(t) if t.exit_code == 0))
            .map(|c| c.name.as_str())
            .collect();
        let mut conditions = vec![
            cond(
                "PodReadyToStartContainers",
                self.pod_problem.is_none(),
                None,
                None,
            ),
            cond(
                "Initialized",
                self.initialized,
                (!self.initialized).then_some("ContainersNotInitialized"),
                (!self.initialized)
                    .then(|| format!("containers with incomplete status: [{}]", uninit.join(" "))),
            ),
            cond(
                "Ready",
                ready,
                (!ready).then_some(unready_reason),
                (!ready).then(|| unready_msg.clone().unwrap_or_default()),
            ),
            cond(
                "ContainersReady",
                ready,
                (!ready).then_some(unready_reason),
                (!ready).then(|| unready_msg.clone().unwrap_or_default()),
            ),
            cond("PodScheduled", true, None, None),
        ];
        if let Some(why) = &self.evicted {
            conditions.push(cond(
                "DisruptionTarget",
                true,
                Some("TerminationByKubelet"),
                Some(why.clone()),
            ));
        }
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": self.host_ip,
            "hostIPs": [{"ip": self.host_ip}],
            "startTime": time(&self.start_time),
            "containerStatuses": self.containers.iter().map(ContainerRecord::to_json).collect::<Vec<_>>(),
        });
        if let Some(why) = &self.evicted {
            status["reason"] = json!("Evicted");
            status["message"] = json!(why);
        }
        if !self.pod_ip.is_empty() {
            status["podIP"] = json!(self.pod_ip);
            status["podIPs"] = json!([{"ip": self.pod_ip}]);
        }
        if !self.init.is_empty() {
            status["initContainerStatuses"] = json!(self
                .init
                .iter()
                .map(ContainerRecord::to_json)
                .collect::<Vec<_>>());
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(restart: &str, init: bool) -> Pod {
        let mut spec = json!({
            "restartPolicy": restart,
            "containers": [{"name": "a", "image": "file:///a.wasm"}, {"name": "b", "image": "file:///b.wasm"}],
        });
        if init {
            spec["initContainers"] = json!([{"name": "i", "image": "file:///i.wasm"}]);
        }
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    fn exit(code: i32) -> Terminated {
        Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.into(),
            message: None,
            started_at: Some(Utc::now()),
            finished_at: Utc::now(),
        }
    }

    #[test]
    fn an_evicted_pod_is_failed_with_its_containers_stopped() {
        let now = Utc::now();
        let mut s = PodState::new(&pod("Always", false), "10.0.0.1", "10.0.0.2", now);
        s.containers[0].running(now);
        s.containers[0].ready = true;
        let why = "Usage of EmptyDir volume \"cache\" exceeds the limit \"1Mi\". ";
        s.evicted = Some(why.to_string());
        assert!(s.is_settled());
        s.settle_eviction(now);
        let st = s.to_status(RestartPolicy::Always, now);
        assert_eq!(st["phase"], "Failed");
        assert_eq!(st["reason"], "Evicted");
        assert_eq!(st["message"], why);
        let a = &st["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(
            (a["exitCode"].as_i64(), a["reason"].as_str()),
            (Some(137), Some("Error"))
        );
        let b = &st["containerStatuses"][1]["state"]["terminated"];
        assert_eq!(b["reason"], "ContainerStatusUnknown", "it never ran");
        let conditions = st["conditions"].as_array().unwrap();
        let disruption = conditions
            .iter()
            .find(|c| c["type"] == "DisruptionTarget")
            .expect("a DisruptionTarget condition");
        assert_eq!(disruption["status"], "True");
        assert_eq!(disruption["reason"], "TerminationByKubelet");
        let ready = conditions.iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!(ready["status"], "False");
    }

    #[test]
    fn a_new_pod_is_pending_with_container_creating() {
        let s = PodState::new(&pod("Always", false), "10.0.0.1", "10.0.0.1", Utc::now());
        let st = s.to_status(RestartPolicy::Always, Utc::now());
        assert_eq!(st["phase"], "Pending");
        assert_eq!(
            st["containerStatuses"][0]["state"]["waiting"]["reason"],
            "ContainerCreating"
        );
        assert_eq!(st["conditions"][2]["type"], "Ready");
        assert_eq!(st["conditions"][2]["status"], "False");
        assert!(!s.is_settled(), "being created is not worth a write");
    }

    #[test]
    fn the_first_status_waits_for_every_container_or_for_trouble() {
        let fresh = || PodState::new(&pod("Always", false), "h", "p", Utc::now());
        // One container up, the other still being created: not yet.
        let mut s = fresh();
        s.containers[0].running(Utc::now());
        assert!(!s.is_settled());
        s.containers[1].running(Utc::now());
        assert!(s.is_settled());
        // Trouble is worth writing at once, even while another container is created.
        let mut s = fresh();
        s.containers[0].waiting("CreateContainerConfigError", Some("no configmap".into()));
        assert!(s.is_settled());
        let mut s = fresh();
        s.pod_problem = Some(("FailedMount".into(), "x".into()));
        assert!(s.is_settled());
        // With a readiness probe, running counts once the probe first passes.
        let mut s = fresh();
        for c in &mut s.containers {
            c.awaits_readiness = true;
            c.running(Utc::now());
        }
        assert!(!s.is_settled());
        s.containers[0].ready = true;
        assert!(!s.is_settled());
        s.containers[1].ready = true;
        assert!(s.is_settled());
        // Main containers waiting behind a running init container: settled.
        let mut s = PodState::new(&pod("Always", true), "h", "p", Utc::now());
        assert!(!s.is_settled(), "the init container is being created");
        s.init[0].running(Utc::now());
        assert!(s.is_settled());
    }

    #[test]
    fn running_and_ready_containers_make_a_ready_pod() {
        let mut s = PodState::new(&pod("Always", false), "h", "p", Utc::now());
        for c in &mut s.containers {
            c.running(Utc::now());
            c.ready = true;
        }
        let st = s.to_status(RestartPolicy::Always, Utc::now());
        assert_eq!(st["phase"], "Running");
        assert_eq!(st["conditions"][2]["status"], "True");
        assert_eq!(st["containerStatuses"][1]["started"], true);
    }

    #[test]
    fn probes_drive_started_ready_and_the_ready_conditions() {
        let mut s = PodState::new(&pod("Always", false), "h", "p", Utc::now());
        for c in &mut s.containers {
            c.running(Utc::now());
            c.ready = true;
        }
        // A startup probe that has not succeeded: not started, hence not ready.
        let a = s.container_mut("a").unwrap();
        a.started = false;
        a.ready = false;
        let st = s.to_status(RestartPolicy::Always, Utc::now());
        assert_eq!(st["containerStatuses"][0]["started"], false);
        assert_eq!(st["containerStatuses"][0]["ready"], false);
        assert_eq!(st["containerStatuses"][1]["started"], true);
        for i in [2, 3] {
            assert_eq!(st["conditions"][i]["status"], "False");
            assert_eq!(st["conditions"][i]["reason"], "ContainersNotReady");
            assert_eq!(
                st["conditions"][i]["message"],
                "containers with unready status: [a]"
            );
        }
        assert_eq!(st["conditions"][3]["type"], "ContainersReady");
        let a = s.container_mut("a").unwrap();
        a.started = true;
        a.ready = true;
        let st = s.to_status(RestartPolicy::Always, Utc::now());
        assert_eq!(st["conditions"][2]["status"], "True");
        assert_eq!(st["conditions"][3]["status"], "True");
        // A run killed by its liveness probe ends neither started nor ready; the next
        // run starts over.
        let a = s.container_mut("a").unwrap();
        a.terminated(exit(137));
        assert!(!a.started && !a.ready);
        let st = s.to_status(RestartPolicy::Always, Utc::now());
        assert_eq!(st["containerStatuses"][0]["started"], false);
        assert_eq!(st["conditions"][2]["status"], "False");
        let a = s.container_mut("a").unwrap();
        a.running(Utc::now());
        assert!(a.started && !a.ready);
        assert_eq!(a.last_state.as_ref().map(|t| t.exit_code), Some(137));
    }

    #[test]
    fn crash_loop_shows_last_state_and_restart_count() {
        let mut s = PodState::new(&pod("Always", false), "h", "p", Utc::now());
        s.container_mut("b").unwrap().running(Utc::now());
        let a = s.container_mut("a").unwrap();
        a.running(Utc::now());
        a.terminated(exit(3));
        a.restart_count = 1;
        a.waiting("CrashLoopBackOff", Some("back-off 10s".into()));
        let st = s.to_status(RestartPolicy::Always, Utc::now());
        let a = &st["containerStatuses"][0];
        assert_eq!(a["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(a["lastState"]["terminated"]["exitCode"], 3);
        assert_eq!(a["restartCount"], 1);
        assert_eq!(st["phase"], "Running");
    }

    #[test]
    fn finished_pods_succeed_or_fail_by_exit_codes() {
        let mut s = PodState::new(&pod("Never", false), "h", "p", Utc::now());
        for c in &mut s.containers {
            c.running(Utc::now());
            c.terminated(exit(0));
        }
        s.finished = true;
        assert_eq!(s.phase(RestartPolicy::Never), "Succeeded");
        s.container_mut("b").unwrap().terminated(exit(1));
        assert_eq!(s.phase(RestartPolicy::Never), "Failed");
        let st = s.to_status(RestartPolicy::Never, Utc::now());
        assert_eq!(st["conditions"][2]["reason"], "PodCompleted");
    }

    #[test]
    fn init_containers_hold_the_pod_in_pending_and_a_failed_one_fails_it() {
        let mut s = PodState::new(&pod("Never", true), "h", "p", Utc::now());
        assert_eq!(s.phase(RestartPolicy::Never), "Pending");
        let st = s.to_status(RestartPolicy::Never, Utc::now());
        assert_eq!(
            st["containerStatuses"][0]["state"]["waiting"]["reason"],
            "PodInitializing"
        );
        assert_eq!(st["conditions"][1]["status"], "False");
        s.container_mut("i").unwrap().terminated(exit(2));
        assert_eq!(s.phase(RestartPolicy::Never), "Failed");
    }

    #[test]
    fn restart_counts_survive_an_agent_restart() {
        let mut p = pod("Always", false);
        p.status = Some(
            serde_json::from_value(json!({
                "startTime": "2026-01-01T00:00:00Z",
                "containerStatuses": [{"name": "a", "image": "x", "imageID": "", "ready": true, "restartCount": 4}]
            }))
            .unwrap(),
        );
        let s = PodState::new(&p, "h", "p", Utc::now());
        assert_eq!(s.containers[0].restart_count, 4);
        assert!(s.containers[0].last_state.is_none());
        assert_eq!(s.containers[1].restart_count, 0);
        assert_eq!(time(&s.start_time), "2026-01-01T00:00:00Z");
    }

    #[test]
    fn a_container_that_ran_under_a_previous_agent_counts_a_restart() {
        let mut p = pod("Always", false);
        p.status = Some(
            serde_json::from_value(json!({
                "containerStatuses": [{"name": "a", "image": "x", "imageID": "", "ready": true, "restartCount": 2,
                    "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]
            }))
            .unwrap(),
        );
        let s = PodState::new(&p, "h", "p", Utc::now());
        assert_eq!(s.containers[0].restart_count, 3);
        assert_eq!(
            s.containers[0].last_state.as_ref().unwrap().reason,
            "Unknown"
        );
    }
}
