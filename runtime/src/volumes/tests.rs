//! Unit tests for [`PodVolumes`] against an in-memory object source.

use std::collections::BTreeMap;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMapProjection, ConfigMapVolumeSource, DownwardAPIProjection, DownwardAPIVolumeFile,
    DownwardAPIVolumeSource, EmptyDirVolumeSource, ObjectFieldSelector,
    PersistentVolumeClaimVolumeSource, PodSpec, ProjectedVolumeSource, ResourceFieldSelector,
    ResourceRequirements, SecretProjection, SecretVolumeSource, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;

use super::source::fake::FakeSource;
use super::*;

fn volume(name: &str) -> Volume {
    Volume {
        name: name.into(),
        ..Volume::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..volume(name)
    }
}

fn host_path(name: &str, path: &Path, kind: Option<&str>) -> Volume {
    Volume {
        host_path: Some(HostPathVolumeSource {
            path: path.to_string_lossy().into_owned(),
            type_: kind.map(Into::into),
        }),
        ..volume(name)
    }
}

fn config_map(name: &str, cm: &str, items: Option<Vec<(&str, &str)>>, optional: bool) -> Volume {
    Volume {
        config_map: Some(ConfigMapVolumeSource {
            name: cm.into(),
            items: items.map(key_to_paths),
            optional: Some(optional),
            default_mode: Some(0o400),
        }),
        ..volume(name)
    }
}

fn key_to_paths(items: Vec<(&str, &str)>) -> Vec<KeyToPath> {
    items
        .into_iter()
        .map(|(key, path)| KeyToPath {
            key: key.into(),
            path: path.into(),
            mode: None,
        })
        .collect()
}

fn field_file(path: &str, field: &str) -> DownwardAPIVolumeFile {
    DownwardAPIVolumeFile {
        path: path.into(),
        field_ref: Some(ObjectFieldSelector {
            api_version: None,
            field_path: field.into(),
        }),
        ..DownwardAPIVolumeFile::default()
    }
}

fn mount(name: &str, at: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: at.into(),
        ..VolumeMount::default()
    }
}

fn container(name: &str, mounts: Vec<VolumeMount>) -> Container {
    Container {
        name: name.into(),
        volume_mounts: Some(mounts),
        resources: Some(ResourceRequirements {
            limits: Some(BTreeMap::from([("memory".into(), Quantity("32Mi".into()))])),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    }
}

fn pod(volumes: Vec<Volume>, containers: Vec<Container>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("prod".into()),
            uid: Some("uid-1".into()),
            labels: Some(BTreeMap::from([("app".into(), "web".into())])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers,
            volumes: Some(volumes),
            service_account_name: Some("builder".into()),
            ..PodSpec::default()
        }),
        status: None,
    }
}

fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path.as_ref())
        .unwrap_or_else(|e| panic!("read {}: {e}", path.as_ref().display()))
}

#[tokio::test]
async fn every_volume_kind_is_laid_out() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let host = tmp.path().join("host/data");
    let pod_dir = tmp.path().join("pod");
    let source = FakeSource::default();
    source.put_config_map("prod", "cfg", &[("a.conf", "A"), ("b.conf", "B")]);
    source.put_secret("prod", "creds", &[("password", b"\x00s3cret\xff")]);

    let projected = Volume {
        projected: Some(ProjectedVolumeSource {
            default_mode: None,
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some("vault".into()),
                        expiration_seconds: Some(7200),
                        path: "token".into(),
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "cfg".into(),
                        items: Some(key_to_paths(vec![("a.conf", "conf/a")])),
                        optional: None,
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    secret: Some(SecretProjection {
                        name: "creds".into(),
                        items: None,
                        optional: None,
                    }),
                    ..VolumeProjection::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![field_file("ns", "metadata.namespace")]),
                    }),
                    ..VolumeProjection::default()
                },
            ]),
        }),
        ..volume("all")
    };
    let downward = Volume {
        downward_api: Some(DownwardAPIVolumeSource {
            default_mode: None,
            items: Some(vec![
                field_file("labels", "metadata.labels"),
                field_file("meta/name", "metadata.name"),
                DownwardAPIVolumeFile {
                    path: "mem".into(),
                    resource_field_ref: Some(ResourceFieldSelector {
                        container_name: Some("app".into()),
                        divisor: Some(Quantity("1Mi".into())),
                        resource: "limits.memory".into(),
                    }),
                    ..DownwardAPIVolumeFile::default()
                },
            ]),
        }),
        ..volume("info")
    };
    let secret = Volume {
        secret: Some(SecretVolumeSource {
            secret_name: Some("creds".into()),
            ..SecretVolumeSource::default()
        }),
        ..volume("secret")
    };
    let app = container(
        "app",
        vec![
            mount("scratch", "/scratch"),
            VolumeMount {
                read_only: Some(true),
                ..mount("host", "/host")
            },
            VolumeMount {
                read_only: Some(false),
                ..mount("cfg", "/etc/cfg")
            },
            mount("secret", "/secret"),
            mount("info", "/info"),
            mount("all", "/all"),
        ],
    );
    let pod = pod(
        vec![
            empty_dir("scratch"),
            host_path("host", &host, Some("DirectoryOrCreate")),
            config_map("cfg", "cfg", Some(vec![("b.conf", "nested/b")]), false),
            secret,
            downward,
            projected,
        ],
        vec![app.clone()],
    );

    let volumes = PodVolumes::prepare(&source, &pod, &PodDirs::on_disk(&pod_dir))
        .await
        .expect("prepare");
    let vdir = pod_dir.join("volumes");
    assert!(vdir.join("scratch").is_dir());
    assert!(host.is_dir(), "DirectoryOrCreate creates the host dir");
    assert!(
        !vdir.join("host").exists(),
        "hostPath is not copied into the pod dir"
    );
    assert_eq!(read(vdir.join("cfg/nested/b")), "B");
    assert!(!vdir.join("cfg/a.conf").exists(), "items select keys");
    assert_eq!(
        std::fs::read(vdir.join("secret/password")).expect("secret"),
        b"\x00s3cret\xff"
    );
    assert_eq!(read(vdir.join("info/labels")), "app=\"web\"");
    assert_eq!(read(vdir.join("info/meta/name")), "web");
    assert_eq!(read(vdir.join("info/mem")), "32");
    assert_eq!(read(vdir.join("all/token")), "token-builder-web-1");
    assert_eq!(read(vdir.join("all/conf/a")), "A");
    assert_eq!(read(vdir.join("all/ns")), "prod");
    assert!(vdir.join("all/password").exists());

    let requests = source.token_requests.lock().expect("lock").clone();
    assert_eq!(
        requests,
        vec![TokenSpec {
            namespace: "prod".into(),
            service_account: "builder".into(),
            audiences: vec!["vault".into()],
            expiration_seconds: 7200,
            pod_name: "web".into(),
            pod_uid: "uid-1".into(),
        }]
    );

    let preopens = volumes.preopens(&app, &[]).expect("preopens");
    let summary: Vec<(String, bool, std::path::PathBuf)> = preopens
        .iter()
        .map(|p| (p.guest.clone(), p.read_only, p.host.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("/scratch".into(), false, vdir.join("scratch")),
            ("/host".into(), true, host.clone()),
            ("/etc/cfg".into(), true, vdir.join("cfg")),
            ("/secret".into(), true, vdir.join("secret")),
            ("/info".into(), true, vdir.join("info")),
            ("/all".into(), true, vdir.join("all")),
        ]
    );
}

#[tokio::test]
async fn missing_objects_and_keys() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = FakeSource::default();
    source.put_config_map("prod", "cfg", &[("a", "1")]);

    let p = pod(vec![config_map("cfg", "missing", None, false)], vec![]);
    let err = PodVolumes::prepare(&source, &p, &PodDirs::on_disk(tmp.path()))
        .await
        .expect_err("missing configmap");
    assert_eq!(
        err.to_string(),
        "MountVolume.SetUp failed for volume \"cfg\" : configmap \"missing\" not found"
    );

    let p = pod(vec![config_map("cfg", "missing", None, true)], vec![]);
    PodVolumes::prepare(&source, &p, &PodDirs::on_disk(tmp.path()))
        .await
        .expect("optional configmap may be missing");
    assert!(tmp.path().join("volumes/cfg/..data").is_dir());

    let p = pod(
        vec![config_map("cfg", "cfg", Some(vec![("zz", "zz")]), false)],
        vec![],
    );
    let err = PodVolumes::prepare(&source, &p, &PodDirs::on_disk(tmp.path()))
        .await
        .expect_err("missing key");
    assert!(
        err.to_string()
            .ends_with("configmap references non-existent config key: zz"),
        "{err}"
    );

    let p = pod(
        vec![config_map(
            "cfg",
            "cfg",
            Some(vec![("zz", "zz"), ("a", "x/a")]),
            true,
        )],
        vec![],
    );
    PodVolumes::prepare(&source, &p, &PodDirs::on_disk(tmp.path()))
        .await
        .expect("optional keys may be missing");
    assert_eq!(read(tmp.path().join("volumes/cfg/x/a")), "1");

    let p = pod(
        vec![Volume {
            secret: Some(SecretVolumeSource {
                secret_name: Some("nope".into()),
                ..SecretVolumeSource::default()
            }),
            ..volume("s")
        }],
        vec![],
    );
    let err = PodVolumes::prepare(&source, &p, &PodDirs::on_disk(tmp.path()))
        .await
        .expect_err("missing secret");
    assert!(
        err.to_string().ends_with("secret \"nope\" not found"),
        "{err}"
    );
}

#[tokio::test]
async fn items_paths_cannot_escape() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = FakeSource::default();
    source.put_config_map("prod", "cfg", &[("a", "1")]);
    for bad in ["../../escape", "/etc/passwd", "..data"] {
        let p = pod(
            vec![config_map("cfg", "cfg", Some(vec![("a", bad)]), false)],
            vec![],
        );
        let err = PodVolumes::prepare(&source, &p, &PodDirs::on_disk(&tmp.path().join("pod")))
            .await
            .expect_err("bad path");
        assert!(err.to_string().contains("invalid path"), "{bad}: {err}");
    }
    assert!(!tmp.path().join("escape").exists());
}

#[tokio::test]
async fn refresh_follows_object_updates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = FakeSource::default();
    source.put_config_map("prod", "cfg", &[("k", "v1")]);
    let p = pod(
        vec![config_map("cfg", "cfg", None, false), empty_dir("e")],
        vec![],
    );
    let volumes = PodVolumes::prepare(&source, &p, &PodDirs::on_disk(tmp.path()))
        .await
        .expect("prepare");
    let file = tmp.path().join("volumes/cfg/k");
    assert_eq!(read(&file), "v1");

    assert!(!volumes.refresh(&source, &p).await.expect("refresh"));

    source.put_config_map("prod", "cfg", &[("k", "v2"), ("new", "n")]);
    assert!(volumes.refresh(&source, &p).await.expect("refresh"));
    assert_eq!(read(&file), "v2");
    assert_eq!(read(tmp.path().join("volumes/cfg/new")), "n");

    // A deleted non-optional object fails the refresh and keeps the last contents.
    source.config_maps.lock().expect("lock").clear();
    let err = volumes.refresh(&source, &p).await.expect_err("object gone");
    assert!(
        err.to_string().contains("configmap \"cfg\" not found"),
        "{err}"
    );
    assert_eq!(read(&file), "v2");
}

#[tokio::test]
async fn downward_volume_follows_label_changes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = FakeSource::default();
    let dv = Volume {
        downward_api: Some(DownwardAPIVolumeSource {
            default_mode: None,
            items: Some(vec![field_file("labels", "metadata.labels")]),
        }),
        ..volume("info")
    };
    let mut p = pod(vec![dv], vec![]);
    let volumes = PodVolumes::prepare(&source, &p, &PodDirs::on_disk(tmp.path()))
        .await
        .expect("prepare");
    p.metadata
        .labels
        .get_or_insert_default()
        .insert("tier".into(), "front".into());
    assert!(volumes.refresh(&source, &p).await.expect("refresh"));
    assert_eq!(
        read(tmp.path().join("volumes/info/labels")),
        "app=\"web\"\ntier=\"front\""
    );
}

fn token_pod() -> Pod {
    pod(
        vec![Volume {
            projected: Some(ProjectedVolumeSource {
                default_mode: None,
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: None,
                        expiration_seconds: None,
                        path: "token".into(),
                    }),
                    ..VolumeProjection::default()
                }]),
            }),
            ..volume("sa")
        }],
        vec![],
    )
}

#[tokio::test]
async fn tokens_are_reused_until_due() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = FakeSource::default();
    let p = token_pod();
    let volumes = PodVolumes::prepare(&source, &p, &PodDirs::on_disk(tmp.path()))
        .await
        .expect("prepare");
    assert!(!volumes.refresh(&source, &p).await.expect("refresh"));
    assert_eq!(source.token_request_count(), 1);
    let request = source.token_requests.lock().expect("lock")[0].clone();
    assert!(request.audiences.is_empty(), "no audience: server default");
    assert_eq!(request.expiration_seconds, 3600);
}

#[tokio::test]
async fn tokens_rotate_when_due() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = FakeSource::default();
    // Tokens that are already at the end of their life are due on every refresh.
    *source.token_lifetime.lock().expect("lock") = Some(Duration::ZERO);
    let p = token_pod();
    let volumes = PodVolumes::prepare(&source, &p, &PodDirs::on_disk(tmp.path()))
        .await
        .expect("prepare");
    let file = tmp.path().join("volumes/sa/token");
    assert_eq!(read(&file), "token-builder-web-1");
    assert!(volumes.refresh(&source, &p).await.expect("refresh"));
    assert_eq!(read(&file), "token-builder-web-2");
    assert_eq!(source.token_request_count(), 2);
}

#[tokio::test]
async fn sub_paths_resolve_inside_the_volume() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = FakeSource::default();
    source.put_config_map("prod", "cfg", &[("file", "x")]);
    let p = pod(
        vec![
            empty_dir("data"),
            config_map("cfg", "cfg", Some(vec![("file", "dir/file")]), false),
        ],
        vec![],
    );
    let volumes = PodVolumes::prepare(&source, &p, &PodDirs::on_disk(tmp.path()))
        .await
        .expect("prepare");
    let data = tmp.path().join("volumes/data");

    let app = container(
        "app",
        vec![
            VolumeMount {
                sub_path: Some("logs/app".into()),
                ..mount("data", "/logs")
            },
            VolumeMount {
                sub_path_expr: Some("pods/$(POD_NAME)".into()),
                ..mount("data", "/mine")
            },
            VolumeMount {
                sub_path: Some("dir".into()),
                read_only: Some(false),
                ..mount("cfg", "/cfg")
            },
        ],
    );
    let env = vec![("POD_NAME".to_string(), "web".to_string())];
    let preopens = volumes.preopens(&app, &env).expect("preopens");
    assert_eq!(preopens.len(), 3);
    assert!(
        data.join("logs/app").is_dir(),
        "subPath is created in emptyDir"
    );
    assert!(data.join("pods/web").is_dir(), "subPathExpr expanded");
    std::fs::write(preopens[0].host.join("out"), "o").expect("write through preopen");
    assert_eq!(read(data.join("logs/app/out")), "o");
    assert!(preopens[0].host.starts_with("/proc/"));
    assert!(!preopens[0].read_only);
    assert!(preopens[2].read_only, "configMap sub-paths stay read-only");
    assert_eq!(read(preopens[2].host.join("file")), "x");

    let cases: Vec<(VolumeMount, &str)> = vec![
        (
            VolumeMount {
                sub_path: Some("../../etc".into()),
                ..mount("data", "/x")
            },
            "must not contain '..'",
        ),
        (
            VolumeMount {
                sub_path: Some("/etc".into()),
                ..mount("data", "/x")
            },
            "must be a relative path",
        ),
        (
            VolumeMount {
                sub_path_expr: Some("$(NOPE)/x".into()),
                ..mount("data", "/x")
            },
            "missing value for NOPE",
        ),
        (
            VolumeMount {
                sub_path: Some("dir/file".into()),
                ..mount("cfg", "/x")
            },
            "is not a directory",
        ),
        (
            VolumeMount {
                sub_path: Some("absent".into()),
                ..mount("cfg", "/x")
            },
            "does not exist",
        ),
        (mount("ghost", "/x"), "cannot find volume \"ghost\""),
    ];
    for (m, expected) in cases {
        let c = container("app", vec![m]);
        let err = volumes.preopens(&c, &env).expect_err("must fail");
        assert!(err.to_string().contains(expected), "{err} vs {expected}");
    }
}

#[tokio::test]
async fn a_symlink_planted_in_a_volume_cannot_lead_out() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = FakeSource::default();
    let p = pod(vec![empty_dir("data")], vec![]);
    let volumes = PodVolumes::prepare(&source, &p, &PodDirs::on_disk(tmp.path()))
        .await
        .expect("prepare");
    let data = tmp.path().join("volumes/data");
    symlink("/etc", data.join("evil")).expect("plant");
    symlink("../../..", data.join("up")).expect("plant");
    for sub in ["evil", "evil/ssl", "up", "up/x"] {
        let c = container(
            "app",
            vec![VolumeMount {
                sub_path: Some(sub.into()),
                ..mount("data", "/x")
            }],
        );
        let err = volumes.preopens(&c, &[]).expect_err("escape refused");
        assert!(
            err.to_string().contains("leads outside the volume"),
            "{sub}: {err}"
        );
    }
    assert!(!tmp.path().join("x").exists());
}

#[tokio::test]
async fn host_path_types() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = FakeSource::default();
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").expect("file");
    let cases: Vec<(Volume, &str)> = vec![
        (
            host_path("h", &file, Some("File")),
            "WASI preopens can only be directories",
        ),
        (
            host_path("h", &file, Some("Socket")),
            "WASI preopens can only be directories",
        ),
        (host_path("h", &file, None), "is not a directory"),
        (
            host_path("h", &tmp.path().join("absent"), Some("Directory")),
            "is not a directory",
        ),
        (host_path("h", Path::new("relative"), None), "absolute"),
        (
            Volume {
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: "c".into(),
                    read_only: None,
                }),
                ..volume("pvc")
            },
            "volume type persistentVolumeClaim is not supported",
        ),
    ];
    for (v, expected) in cases {
        let p = pod(vec![v], vec![]);
        let err = PodVolumes::prepare(&source, &p, &PodDirs::on_disk(&tmp.path().join("pod")))
            .await
            .expect_err("refused");
        assert!(err.to_string().contains(expected), "{err} vs {expected}");
    }
    let created = tmp.path().join("made/by/default");
    let p = pod(vec![host_path("h", &created, None)], vec![]);
    PodVolumes::prepare(&source, &p, &PodDirs::on_disk(&tmp.path().join("pod")))
        .await
        .expect("type \"\" creates a missing directory");
    assert!(created.is_dir());
}

#[tokio::test]
async fn prepare_again_keeps_empty_dir_contents() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = FakeSource::default();
    let p = pod(vec![empty_dir("data")], vec![]);
    PodVolumes::prepare(&source, &p, &PodDirs::on_disk(tmp.path()))
        .await
        .expect("prepare");
    std::fs::write(tmp.path().join("volumes/data/keep"), "k").expect("write");
    PodVolumes::prepare(&source, &p, &PodDirs::on_disk(tmp.path()))
        .await
        .expect("prepare again");
    assert_eq!(read(tmp.path().join("volumes/data/keep")), "k");
}

#[tokio::test]
async fn removal_never_follows_symlinks_out() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = FakeSource::default();
    let host = tmp.path().join("host");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&host).expect("host");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(host.join("precious"), "p").expect("write");
    std::fs::write(outside.join("precious"), "p").expect("write");
    let pod_dir = tmp.path().join("pod");
    let p = pod(
        vec![empty_dir("data"), host_path("h", &host, Some("Directory"))],
        vec![],
    );
    let volumes = PodVolumes::prepare(&source, &p, &PodDirs::on_disk(&pod_dir))
        .await
        .expect("prepare");
    let data = pod_dir.join("volumes/data");
    symlink(&outside, data.join("link-out")).expect("plant");
    symlink(&host, data.join("link-host")).expect("plant");
    std::fs::create_dir_all(data.join("deep/tree")).expect("tree");
    volumes.remove().expect("remove");
    assert!(!pod_dir.exists());
    assert!(outside.join("precious").exists());
    assert!(host.join("precious").exists());
    remove_pod_dir(&pod_dir).expect("removing twice is fine");
}

#[tokio::test]
async fn memory_backed_volumes_live_in_the_memory_dir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let source = FakeSource::default();
    source.put_config_map("prod", "cfg", &[("a.conf", "A")]);
    source.put_secret("prod", "creds", &[("password", b"pw")]);
    let dirs = PodDirs::of(
        &tmp.path().join("pods"),
        Some(&tmp.path().join("shm")),
        "uid-1",
    );
    assert_eq!(dirs.disk, tmp.path().join("pods/uid-1"));
    assert_eq!(dirs.memory, tmp.path().join("shm/uid-1"));
    let secret = Volume {
        secret: Some(SecretVolumeSource {
            secret_name: Some("creds".into()),
            ..SecretVolumeSource::default()
        }),
        ..volume("secret")
    };
    let memory_empty_dir = Volume {
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            ..EmptyDirVolumeSource::default()
        }),
        ..volume("fast")
    };
    let p = pod(
        vec![
            secret,
            memory_empty_dir,
            empty_dir("scratch"),
            config_map("cfg", "cfg", None, false),
        ],
        vec![container(
            "app",
            vec![mount("secret", "/secret"), mount("fast", "/fast")],
        )],
    );
    let volumes = PodVolumes::prepare(&source, &p, &dirs)
        .await
        .expect("prepare");
    assert_eq!(read(dirs.memory.join("secret/password")), "pw");
    assert!(dirs.memory.join("fast").is_dir());
    assert!(dirs.disk.join("volumes/scratch").is_dir());
    assert_eq!(read(dirs.disk.join("volumes/cfg/a.conf")), "A");
    assert!(
        !dirs.disk.join("volumes/secret").exists() && !dirs.disk.join("volumes/fast").exists(),
        "memory-backed volumes are not on disk"
    );
    let preopens = volumes
        .preopens(&p.spec.as_ref().expect("spec").containers[0], &[])
        .expect("preopens");
    assert_eq!(preopens[0].host, dirs.memory.join("secret"));

    source.put_secret("prod", "creds", &[("password", b"new")]);
    assert!(volumes.refresh(&source, &p).await.expect("refresh"));
    assert_eq!(read(dirs.memory.join("secret/password")), "new");

    volumes.remove().expect("remove");
    assert!(!dirs.disk.exists() && !dirs.memory.exists());
}

#[tokio::test]
async fn a_pod_without_volumes_creates_no_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dirs = PodDirs::of(
        &tmp.path().join("pods"),
        Some(&tmp.path().join("shm")),
        "uid-1",
    );
    let volumes = PodVolumes::prepare(&FakeSource::default(), &pod(vec![], vec![]), &dirs)
        .await
        .expect("prepare");
    assert!(!dirs.disk.exists() && !dirs.memory.exists());
    volumes
        .remove()
        .expect("removing what was never made is fine");
}

#[tokio::test]
async fn an_empty_dir_over_its_limit_is_found() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dirs = PodDirs::of(
        &tmp.path().join("pods"),
        Some(&tmp.path().join("memory")),
        "uid-1",
    );
    let source = FakeSource::default();
    let memory = Volume {
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: None,
        }),
        ..volume("scratch")
    };
    let p = pod(
        vec![
            empty_dir("cache"),
            memory,
            host_path("host", tmp.path(), None),
        ],
        vec![container("app", Vec::new())],
    );
    let volumes = PodVolumes::prepare(&source, &p, &dirs)
        .await
        .expect("prepare");
    let limit = |volume: &str, bytes: u64| usage::SizeLimit {
        volume: volume.into(),
        bytes,
        shown: format!("{bytes}"),
    };
    let limits = vec![
        limit("cache", 64 * 1024),
        limit("scratch", 64 * 1024),
        // Not an emptyDir, not a volume of the pod: never over.
        limit("host", 0),
        limit("nope", 0),
    ];
    assert_eq!(volumes.over_limit(&limits), None);

    let (_, scratch) = volumes.volume("scratch").expect("scratch");
    std::fs::write(scratch.join("blob"), vec![7u8; 100 * 1024]).expect("write");
    let (over, used) = volumes.over_limit(&limits).expect("scratch is over");
    assert_eq!(over.volume, "scratch");
    assert!(used >= 100 * 1024, "{used}");
    assert!(
        volumes.disk_usage() < 100 * 1024,
        "a memory-backed emptyDir is not local storage"
    );

    std::fs::remove_file(scratch.join("blob")).expect("remove");
    let (_, cache) = volumes.volume("cache").expect("cache");
    std::fs::create_dir(cache.join("deep")).expect("mkdir");
    std::fs::write(cache.join("deep/blob"), vec![7u8; 100 * 1024]).expect("write");
    assert_eq!(
        volumes.over_limit(&limits).map(|(l, _)| l.volume.as_str()),
        Some("cache")
    );
    assert!(volumes.disk_usage() >= 100 * 1024);
}
