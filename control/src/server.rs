//! `wasmkube server`: the control plane process, wired together.
//!
//! Start-up order: the PKI under `<data-dir>/pki` (with the ServiceAccount signing key
//! `sa.key`, unless `--service-account-signing-key-file` names another), etcd (a managed child when no
//! `--etcd-servers` are given), the store, the system namespaces, the HTTPS listener,
//! then `<data-dir>/kubeconfig` — written last, so a file that exists means the server
//! is serving. The controllers that run inside the control plane are API clients of
//! that same listener, never readers of etcd.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
pub use ipnet::Ipv4Net;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::apiserver::allocator::ServiceAllocator;
use crate::apiserver::authn::{Authenticator, ServiceAccountAuthenticator};
use crate::apiserver::jwt::SigningKey;
use crate::apiserver::local::LocalApi;
use crate::apiserver::objects::Objects;
use crate::apiserver::tokens::TokenIssuer;
use crate::apiserver::{self, ApiState};
use crate::controllers;
use crate::etcd_process::ManagedEtcd;
use crate::kubeconfig::{self, Credential};
use crate::leader;
use crate::pki::Pki;
use crate::registry::Registry;
use crate::scheduler;
use crate::storage::{compactor, EtcdStore, Store};

/// The ServiceAccount signing key's file in the PKI directory (kubeadm's name).
const SERVICE_ACCOUNT_KEY_FILE: &str = "sa.key";

/// How long shutdown waits for the leader-elected tasks to release their Leases.
const LEADER_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything `wasmkube server` can be told.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub data_dir: PathBuf,
    /// External etcd endpoints; empty to run a managed etcd child.
    pub etcd_servers: Vec<String>,
    pub bind_address: IpAddr,
    /// 0 picks a free port.
    pub secure_port: u16,
    /// Extra subject alternative names for the serving certificate.
    pub tls_sans: Vec<String>,
    pub service_cidr: Ipv4Net,
    /// The cluster's DNS domain: the serving certificate names
    /// `kubernetes.default.svc.<domain>`.
    pub cluster_domain: String,
    pub node_port_range: (u16, u16),
    /// A Kubernetes static token file (`token,user,uid,"groups"`).
    pub token_auth_file: Option<PathBuf>,
    /// The `iss` of ServiceAccount tokens (and the API's audience).
    pub service_account_issuer: String,
    /// The ServiceAccount signing key (PKCS#8 PEM P-256), created if missing; default
    /// `<data-dir>/pki/sa.key`. Control planes sharing one etcd should share this key.
    pub service_account_signing_key_file: Option<PathBuf>,
    pub compaction_interval: Duration,
    pub bookmark_interval: Duration,
    /// Workload requests executing at once; 0 for no limit.
    pub max_workload_requests_inflight: usize,
    /// Run the controllers in this process.
    pub run_controllers: bool,
    /// Run the scheduler in this process.
    pub run_scheduler: bool,
    /// The controllers' settings (node lifecycle timings, node IPAM ranges).
    pub controllers: controllers::Options,
}

impl ServerOptions {
    /// Defaults for everything but the data directory.
    pub fn new(data_dir: PathBuf) -> Self {
        ServerOptions {
            data_dir,
            etcd_servers: Vec::new(),
            bind_address: IpAddr::from([127, 0, 0, 1]),
            secure_port: 6443,
            tls_sans: Vec::new(),
            service_cidr: "127.96.0.0/16".parse().expect("valid default CIDR"),
            cluster_domain: "cluster.local".to_string(),
            node_port_range: (30000, 32767),
            token_auth_file: None,
            service_account_issuer: crate::apiserver::tokens::DEFAULT_ISSUER.to_string(),
            service_account_signing_key_file: None,
            compaction_interval: Duration::from_secs(300),
            bookmark_interval: Duration::from_secs(60),
            max_workload_requests_inflight: crate::apiserver::flowcontrol::default_seats(),
            run_controllers: true,
            run_scheduler: true,
            controllers: controllers::Options::default(),
        }
    }
}

/// A running control plane.
pub struct Server {
    /// `https://host:port`.
    pub url: String,
    pub kubeconfig: PathBuf,
    pub addr: SocketAddr,
    /// The token node agents join with (also in `<data-dir>/join-token`).
    pub join_token: String,
    /// In-process API clients (for the node agent `up` runs beside the control plane).
    pub local: LocalApi,
    shutdown: watch::Sender<bool>,
    /// Stops the leader-elected scheduler and controllers, which release their Leases.
    leader_stop: watch::Sender<bool>,
    leader_tasks: Vec<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    etcd: Option<ManagedEtcd>,
}

impl Server {
    /// Starts the control plane and returns once it serves.
    pub async fn start(opts: ServerOptions) -> Result<Server> {
        std::fs::create_dir_all(&opts.data_dir)
            .with_context(|| format!("creating data dir {}", opts.data_dir.display()))?;
        let mut sans =
            apiserver::kubernetes_service::serving_names(opts.service_cidr, &opts.cluster_domain);
        sans.extend(opts.tls_sans.iter().cloned());
        let pki = Arc::new(
            Pki::load_or_create(&opts.data_dir.join("pki"), &sans)
                .context("preparing the cluster PKI")?,
        );
        let sa_key_path = opts
            .service_account_signing_key_file
            .clone()
            .unwrap_or_else(|| pki.dir().join(SERVICE_ACCOUNT_KEY_FILE));
        let sa_key = SigningKey::load_or_create(&sa_key_path)
            .context("preparing the service account signing key")?;
        let tokens = Arc::new(TokenIssuer::new(
            Arc::new(sa_key),
            opts.service_account_issuer.clone(),
        ));

        let (etcd, endpoints) = if opts.etcd_servers.is_empty() {
            let etcd = ManagedEtcd::start(&opts.data_dir.join("etcd"))
                .await
                .context("starting the managed etcd")?;
            let url = etcd.client_url();
            tracing::info!(%url, "managed etcd is up");
            (Some(etcd), vec![url])
        } else {
            (None, opts.etcd_servers.clone())
        };
        let store: Arc<dyn Store> = Arc::new(
            EtcdStore::connect(&endpoints)
                .await
                .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?,
        );

        let registry = Registry::builtin();
        let allocator =
            ServiceAllocator::new(store.clone(), opts.service_cidr, opts.node_port_range);
        let objects = Arc::new(Objects::new(store.clone(), registry, allocator));
        objects
            .ensure_system_namespaces()
            .await
            .map_err(|e| anyhow::anyhow!("creating the system namespaces: {}", e.message))?;
        repair_allocations(&objects).await;
        ensure_default_runtime_class(&objects).await;
        let namespace_map = objects.spawn_background();

        let authenticator = Arc::new(Authenticator::new().with_service_accounts(
            ServiceAccountAuthenticator::new(tokens.clone(), objects.clone()),
        ));
        if let Some(path) = &opts.token_auth_file {
            let n = authenticator
                .load_token_file(path)
                .with_context(|| format!("loading token file {}", path.display()))?;
            tracing::info!(tokens = n, file = %path.display(), "loaded static tokens");
        }
        let join_token = crate::apiserver::join::load_or_create_token(&opts.data_dir)
            .context("preparing the node join token")?;
        if let Some(user) = crate::apiserver::join::token_user(&join_token) {
            authenticator.add_token(&join_token, user);
        }

        let listener = TcpListener::bind((opts.bind_address, opts.secure_port))
            .await
            .with_context(|| format!("binding {}:{}", opts.bind_address, opts.secure_port))?;
        let addr = listener.local_addr()?;
        let host = match opts.bind_address {
            IpAddr::V4(v4) if v4.is_unspecified() => "127.0.0.1".to_string(),
            IpAddr::V6(v6) if v6.is_unspecified() => "127.0.0.1".to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        };
        let url = format!("https://{host}:{}", addr.port());
        let advertise: IpAddr = match opts.bind_address {
            ip if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            ip => ip,
        };
        if let Err(e) = apiserver::kubernetes_service::ensure(
            &objects,
            opts.service_cidr,
            advertise,
            addr.port(),
        )
        .await
        {
            tracing::warn!(error = %e.message, "setting up the default/kubernetes Service");
        }
        let state = Arc::new(ApiState {
            objects: objects.clone(),
            authenticator: authenticator.clone(),
            server_address: format!("{host}:{}", addr.port()),
            bookmark_interval: opts.bookmark_interval,
            pki: pki.clone(),
            tokens: tokens.clone(),
            flow: apiserver::flowcontrol::FlowControl::new(opts.max_workload_requests_inflight),
        });
        let tls = pki
            .server_tls_config()
            .context("building the TLS configuration")?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let router = apiserver::router(state);
        let local = LocalApi::new(router.clone());
        let mut tasks = vec![tokio::spawn(apiserver::serve::serve_tls(
            listener,
            tls,
            router,
            shutdown_rx.clone(),
        ))];
        tasks.push(compactor::spawn(store.clone(), opts.compaction_interval));
        tasks.push(namespace_map);
        tracing::info!(%url, "API server serving");

        let (cert_pem, key_pem) = pki
            .issue_client_cert("admin", &["system:masters"])
            .context("issuing the admin client certificate")?;
        let kubeconfig_path = opts.data_dir.join("kubeconfig");
        let admin = Credential::ClientCert { cert_pem, key_pem };
        // The controllers and the scheduler are API clients with identities of their
        // own, as kube-controller-manager and kube-scheduler are; in this process they
        // reach the API without the wire. Their kubeconfigs are written for running
        // them as processes of their own.
        let component_client = |user: &'static str, file: &'static str| {
            let pki = &pki;
            let url = &url;
            let local = &local;
            let path = opts.data_dir.join(file);
            async move {
                let (cert_pem, key_pem) = pki
                    .issue_client_cert(user, &[])
                    .with_context(|| format!("issuing the certificate of {user}"))?;
                let client = local
                    .client(&cert_pem)
                    .with_context(|| format!("the in-process client of {user}"))?;
                kubeconfig::write(
                    &path,
                    "wasmkube",
                    url,
                    pki.ca_cert_pem(),
                    user,
                    &Credential::ClientCert { cert_pem, key_pem },
                )
                .with_context(|| format!("writing {}", path.display()))?;
                anyhow::Ok(client)
            }
        };
        // Both run only while this process holds their Lease, so that several control
        // planes can share one etcd. They stop (and release the Leases) before the API
        // server does, through a channel of their own.
        let (leader_stop, leader_stop_rx) = watch::channel(false);
        let mut leader_tasks = Vec::new();
        if opts.run_controllers {
            let client = component_client(
                "system:kube-controller-manager",
                "controller-manager.kubeconfig",
            )
            .await?;
            let config = leader::Config::new(leader::CONTROLLER_MANAGER_LEASE);
            let work_client = client.clone();
            let mut controller_options = opts.controllers.clone();
            controller_options.root_ca_pem = pki.ca_cert_pem().to_string();
            controller_options.service_account_tokens = Some(tokens.clone());
            leader_tasks.push(tokio::spawn(leader::run_while_leader(
                client,
                config,
                leader_stop_rx.clone(),
                move || controllers::controllers(work_client.clone(), controller_options.clone()),
            )));
        }
        if opts.run_scheduler {
            let client = component_client("system:kube-scheduler", "scheduler.kubeconfig").await?;
            let recorder = Arc::new(controllers::events::Recorder::new(
                client.clone(),
                "default-scheduler",
            ));
            let config = leader::Config::new(leader::SCHEDULER_LEASE);
            let work_client = client.clone();
            leader_tasks.push(tokio::spawn(leader::run_while_leader(
                client,
                config,
                leader_stop_rx.clone(),
                move || scheduler::run(work_client.clone(), recorder.clone()),
            )));
        }
        kubeconfig::write(
            &kubeconfig_path,
            "wasmkube",
            &url,
            pki.ca_cert_pem(),
            "admin",
            &admin,
        )
        .with_context(|| format!("writing {}", kubeconfig_path.display()))?;
        tracing::info!(kubeconfig = %kubeconfig_path.display(), "admin kubeconfig written");

        Ok(Server {
            url,
            kubeconfig: kubeconfig_path,
            addr,
            join_token,
            local,
            shutdown,
            leader_stop,
            leader_tasks,
            tasks,
            etcd,
        })
    }

    /// Stops serving, the background tasks and the managed etcd.
    pub async fn shutdown(self) {
        // The scheduler and controllers first, while the API server still serves their
        // Lease releases; a release is bounded by the retry period, this by a bit more.
        let _ = self.leader_stop.send(true);
        for mut t in self.leader_tasks {
            if tokio::time::timeout(LEADER_STOP_TIMEOUT, &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            t.abort();
        }
        if let Some(etcd) = self.etcd {
            etcd.stop().await;
        }
    }
}

/// Frees Service allocations a crash left behind; logged, never fatal.
async fn repair_allocations(objects: &Objects) {
    let Some(def) = objects.registry.lookup("", "v1", "services") else {
        return;
    };
    match objects.list(&def, None, &Default::default()).await {
        Ok((services, _)) => match objects.allocator.repair(&services).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(released = n, "repaired service allocations"),
            Err(e) => tracing::warn!(error = %e, "service allocation repair failed"),
        },
        Err(e) => tracing::warn!(error = %e.message, "listing services for repair failed"),
    }
}

/// The RuntimeClass `wasmtime`, selecting the nodes whose agent offers wasmtime (every
/// wasmkube agent labels its node so). Created once; an operator's edits are kept.
async fn ensure_default_runtime_class(objects: &Objects) {
    let Some(def) = objects
        .registry
        .lookup("node.k8s.io", "v1", "runtimeclasses")
    else {
        return;
    };
    let obj = serde_json::json!({
        "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
        "metadata": {"name": "wasmtime"},
        "handler": "wasmtime",
        "scheduling": {"nodeSelector": {"runtime.wasmkube.io/wasmtime": "true"}},
    });
    match objects
        .create(
            &def,
            None,
            obj,
            false,
            crate::apiserver::objects::Ownership::Update("wasmkube"),
        )
        .await
    {
        Ok(_) => tracing::info!("created the default RuntimeClass wasmtime"),
        Err(e) if e.reason == "AlreadyExists" => {}
        Err(e) => tracing::warn!(error = %e.message, "creating the default RuntimeClass"),
    }
}
