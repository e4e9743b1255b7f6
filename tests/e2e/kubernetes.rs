//! The Kubernetes example (`deploy/kubernetes/`): every manifest parses,
//! holds the expected objects, and agrees with the wsgate config it ships
//! (grace period, probe, drain hook, DNS names); that config passes
//! `wsgate check`. And the readiness endpoint those manifests probe:
//! `GET /healthz` answers without a token, and 503 once wsgate shuts down.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_yaml_ng::Value;
use tokio::net::TcpStream;
use wsgate_tests::*;

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// Every YAML document of every file: (file name, document).
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
            assert!(
                value["apiVersion"].is_string(),
                "{name}: a document without apiVersion"
            );
            docs.push((name.clone(), value));
        }
    }
    docs
}

fn find<'a>(docs: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn seconds(text: &Value) -> u64 {
    let text = text.as_str().expect("a duration");
    wsgate::config::units::parse_duration(text)
        .unwrap()
        .as_secs()
}

#[test]
fn kubernetes_manifests_parse_and_agree_with_their_wsgate_config() {
    let docs = documents();
    let mut objects: Vec<String> = docs
        .iter()
        .map(|(file, d)| {
            let name = d["metadata"]["name"].as_str().unwrap_or("-");
            format!("{file}: {}/{name}", d["kind"].as_str().unwrap_or("?"))
        })
        .collect();
    objects.sort();
    assert_eq!(
        objects,
        [
            "chat.yaml: PodDisruptionBudget/chat",
            "chat.yaml: Service/chat",
            "chat.yaml: StatefulSet/chat",
            "kustomization.yaml: Kustomization/-",
            "redis.yaml: Deployment/redis",
            "redis.yaml: Service/redis",
            "wsgate.yaml: ConfigMap/wsgate-config",
            "wsgate.yaml: Deployment/wsgate",
            "wsgate.yaml: NetworkPolicy/wsgate-admin",
            "wsgate.yaml: PodDisruptionBudget/wsgate",
            "wsgate.yaml: Service/wsgate",
            "wsgate.yaml: Service/wsgate-admin",
        ]
    );
    let kustomization = &docs
        .iter()
        .find(|(f, _)| f == "kustomization.yaml")
        .unwrap()
        .1;
    let mut resources: Vec<&str> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    resources.sort();
    assert_eq!(resources, ["chat.yaml", "redis.yaml", "wsgate.yaml"]);
    let namespace = kustomization["namespace"].as_str().unwrap();

    let text = find(&docs, "ConfigMap", "wsgate-config")["data"]["wsgate.yaml"]
        .as_str()
        .expect("the ConfigMap holds wsgate.yaml");
    let config: Value = serde_yaml_ng::from_str(text).unwrap();

    // SIGKILL must not cut the paced 1001 shutdown short.
    let deployment = find(&docs, "Deployment", "wsgate");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let pre_stop_sleep = container["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .map_or(0, |c| {
            if c[0] == "sleep" {
                c[1].as_str().unwrap().parse().unwrap()
            } else {
                0
            }
        });
    let shutdown =
        seconds(&config["runtime"]["shutdown_window"]) + seconds(&config["timeouts"]["close"]) + 1;
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace >= pre_stop_sleep + shutdown,
        "terminationGracePeriodSeconds {grace} < preStop {pre_stop_sleep} s + shutdown {shutdown} s"
    );
    assert!(
        grace <= pre_stop_sleep + shutdown + 10,
        "grace {grace} s is far over the shutdown"
    );

    // Readiness from the admin API's /healthz, on the port it listens on.
    let admin = config["admin"]["address"].as_str().unwrap();
    let admin_port: u64 = admin.rsplit_once(':').unwrap().1.parse().unwrap();
    let probe = &container["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/healthz");
    let port = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == probe["port"])
        .expect("the probe names a container port");
    assert_eq!(port["containerPort"].as_u64(), Some(admin_port));
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "config")
        .unwrap();
    assert_eq!(
        args,
        [
            "run",
            "-c",
            &format!("{}/wsgate.yaml", mount["mountPath"].as_str().unwrap())
        ]
    );

    // Discovery asks the headless chat Service; peers name the headless admin Service.
    let chat = find(&docs, "Service", "chat");
    assert_eq!(chat["spec"]["clusterIP"], "None");
    let discovery = &config["pools"]["chat"]["discovery"];
    assert_eq!(
        discovery["dns"].as_str(),
        Some(format!("chat.{namespace}.svc.cluster.local").as_str())
    );
    assert_eq!(discovery["type"], "a");
    assert_eq!(discovery["port"], chat["spec"]["ports"][0]["port"]);
    let admin_service = find(&docs, "Service", "wsgate-admin");
    assert_eq!(admin_service["spec"]["clusterIP"], "None");
    let peer = format!("wsgate-admin.{namespace}.svc.cluster.local:{admin_port}");
    assert_eq!(config["admin"]["peers"][0].as_str(), Some(peer.as_str()));

    // The chat pods drain themselves on every replica before they stop.
    let statefulset = find(&docs, "StatefulSet", "chat");
    let chat_container = &statefulset["spec"]["template"]["spec"]["containers"][0];
    let hook = serde_yaml_ng::to_string(&chat_container["lifecycle"]["preStop"]).unwrap();
    assert!(hook.contains("wsgate drain \"chat/${POD_IP}:"), "{hook}");
    assert!(hook.contains("--wait"), "{hook}");
    let env = serde_yaml_ng::to_string(&chat_container["env"]).unwrap();
    assert!(env.contains(&peer), "the hook reaches every replica: {env}");
    assert!(
        find(&docs, "Deployment", "redis")["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .starts_with("redis:")
    );

    // The config itself passes `wsgate check`.
    let dir = scratch("k8s");
    let file = dir.join("wsgate.yaml");
    std::fs::write(&file, text).unwrap();
    let (code, out, err) = wsgate(&["check", "-c", &file.display().to_string()]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
}

/// `GET path` on the admin address without a token: (status, response).
async fn get_without_token(admin: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::time::timeout(STEP, TcpStream::connect(admin))
        .await
        .unwrap()
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    let resp = raw_request(&mut s, req.as_bytes()).await.unwrap();
    (status_of(&resp).unwrap_or(0), resp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_needs_no_token_and_turns_503_on_shutdown() {
    let backend = Backend::start("b1").unwrap();
    let extra = "admin: { address: \"127.0.0.1:0\", token_file: admin.token }\nruntime: { shutdown_window: 10s }\n";
    let mut gate = Gate::start(&tls_config(&[("b1", backend.addr, 1)], extra), 1).unwrap();
    let admin = gate.admin.unwrap();
    let (status, resp) = get_without_token(admin, "/healthz").await;
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("{\"ok\":true}"), "{resp}");
    // Everything else still wants the token.
    let (status, resp) = get_without_token(admin, "/v1/status").await;
    assert_eq!(status, 401, "{resp}");

    // A live connection keeps the shutdown going for its window.
    let mut ws = wss(&gate, "/echo?user=alice").await.unwrap();
    assert_eq!(hello(&mut ws).await.unwrap(), "b1");
    gate.proc.signal("TERM");
    let deadline = Instant::now() + STEP;
    loop {
        let (status, resp) = get_without_token(admin, "/healthz").await;
        if status == 503 {
            assert!(resp.contains("\"shutting_down\":true"), "{resp}");
            break;
        }
        assert_eq!(status, 200, "{resp}");
        assert!(
            Instant::now() < deadline,
            "/healthz never said 503 after SIGTERM"
        );
        // Poll the endpoint again, as a kubelet would.
        tokio::task::yield_now().await;
    }
    assert_eq!(close_within(&mut ws, STEP).await, Some(1001));
    assert_eq!(gate.proc.wait_exit(STEP), Some(0));
}
