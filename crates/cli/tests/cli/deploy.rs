//! The deployment files, checked statically (no Docker engine or cluster runs here): every
//! container runs a real subcommand with variables the code reads, addresses line up between
//! services, probes hit `/healthz` and `/readyz`, the gateway scales, kustomize references exist.
//! The scale tests run the same processes directly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

/// Every `"NAME"` string literal in the services' and crates' sources.
fn variables_read_by_the_code(root: &Path) -> String {
    let mut text = String::new();
    for dir in ["services", "crates"] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() && !path.ends_with("tests") {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    text.push_str(&std::fs::read_to_string(&path).unwrap());
                }
            }
        }
    }
    text
}

fn subcommands() -> String {
    String::from_utf8(crate::run(&["--help"], &[]).stdout).unwrap()
}

fn check_env(name: &str, code: &str, whose: &str) {
    assert!(
        code.contains(&format!("\"{name}\"")),
        "{whose}: `{name}` is not a variable convex-edge reads"
    );
}

/// `host:port` of a URL or an address.
fn host_port(s: &str) -> (String, u16) {
    let s = s.split("://").last().unwrap().split('/').next().unwrap();
    let s = s.rsplit('@').next().unwrap();
    let (host, port) = s.rsplit_once(':').unwrap();
    (host.to_owned(), port.parse().unwrap())
}

#[tokio::test]
async fn compose_and_kubernetes_files_are_consistent() {
    let root = edge_testkit::workspace_root();
    let parsed = edge_testkit::node("deploy-check.mjs", &[root.display().to_string()]).await;
    let code = variables_read_by_the_code(&root);
    let help = subcommands();

    // --- docker compose ---
    let services = parsed["compose"]["services"].as_object().unwrap();
    let ours: BTreeMap<&String, &Value> = services
        .iter()
        .filter(|(_, s)| s["image"] == "convex-edge:latest")
        .collect();
    let names: BTreeSet<&str> = ours.keys().map(|s| s.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["auth", "gateway", "migrate", "query"]),
        "the stack's own services"
    );
    for name in ["postgres", "redis", "convex", "lb"] {
        assert!(services.contains_key(name), "compose lacks {name}");
    }
    let env = |service: &str, var: &str| -> String {
        services[service]["environment"][var]
            .as_str()
            .unwrap_or_else(|| panic!("{service} lacks {var}"))
            .to_owned()
    };
    for (name, service) in &ours {
        let command = service["command"][0].as_str().unwrap();
        assert!(
            help.contains(&format!("\n  {command} ")),
            "{name}: `{command}` is no subcommand"
        );
        assert_eq!(service["build"]["dockerfile"], "deploy/docker/Dockerfile");
        for var in service["environment"].as_object().unwrap().keys() {
            check_env(var, &code, &format!("compose {name}"));
        }
        for dep in service["depends_on"].as_object().into_iter().flatten() {
            assert!(
                services.contains_key(dep.0),
                "{name} depends on missing {}",
                dep.0
            );
        }
        if let Some(test) = service["healthcheck"]["test"].as_array() {
            assert_eq!(test[1], "convex-edge");
            assert_eq!(test[2], "probe");
            assert!(test[3].as_str().unwrap().ends_with("/readyz"));
        }
    }
    // Addresses line up: clients point at the listeners of the services they name.
    let auth_grpc = host_port(&env("auth", "AUTH_GRPC_ADDR")).1;
    for client in ["gateway", "query"] {
        assert_eq!(
            host_port(&env(client, "AUTH_GRPC_URL")),
            ("auth".into(), auth_grpc)
        );
    }
    let query_grpc = host_port(&env("query", "QUERY_GRPC_ADDR")).1;
    assert_eq!(
        host_port(&env("gateway", "QUERY_GRPC_URL")),
        ("query".into(), query_grpc)
    );
    assert_eq!(host_port(&env("query", "CONVEX_URL")).0, "convex");
    assert_eq!(
        host_port(&env("gateway", "REDIS_URL")),
        ("redis".into(), 6379)
    );
    assert_eq!(env("auth", "DATABASE_URL"), env("migrate", "DATABASE_URL"));
    assert_eq!(host_port(&env("auth", "DATABASE_URL")).0, "postgres");
    assert_eq!(env("auth", "JWT_ISSUER"), env("query", "JWT_ISSUER"));
    // The gateway scales: no host port or container name; the load balancer publishes 8080
    // and forwards to the gateway's port.
    assert!(services["gateway"].get("ports").is_none());
    assert!(services["gateway"].get("container_name").is_none());
    assert_eq!(services["lb"]["ports"][0], "8080:8080");
    let nginx = std::fs::read_to_string(root.join("deploy/docker/nginx.conf")).unwrap();
    let gateway_port = host_port(&env("gateway", "GATEWAY_HTTP_ADDR")).1;
    assert!(nginx.contains(&format!("http://gateway:{gateway_port}")));
    let query_port = host_port(&env("query", "QUERY_HTTP_ADDR")).1;
    assert_eq!(
        env("gateway", "QUERY_PUBLIC_URL"),
        format!("http://localhost:{query_port}")
    );

    // --- Dockerfile ---
    let dockerfile = std::fs::read_to_string(root.join("deploy/docker/Dockerfile")).unwrap();
    assert!(dockerfile.contains("--bin convex-edge"));
    assert!(dockerfile.contains("ENTRYPOINT [\"convex-edge\"]"));
    assert!(
        dockerfile.contains("USER 10001"),
        "the image does not run as root"
    );
    let dockerignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    assert!(dockerignore.lines().any(|l| l == "target"));

    // --- Kubernetes ---
    let k8s = parsed["k8s"].as_object().unwrap();
    for (file, docs) in k8s {
        let dir = root.join(file).parent().unwrap().to_owned();
        for doc in docs.as_array().unwrap() {
            if doc["kind"] == "Kustomization" {
                for list in ["resources", "patches"] {
                    for entry in doc[list].as_array().into_iter().flatten() {
                        let path = entry.as_str().or(entry["path"].as_str()).unwrap();
                        assert!(dir.join(path).exists(), "{file}: {path} does not exist");
                    }
                }
            }
        }
    }
    let base: Vec<&Value> = k8s
        .iter()
        .filter(|(f, _)| f.starts_with("deploy/k8s/base/"))
        .flat_map(|(_, docs)| docs.as_array().unwrap())
        .collect();
    let config = base.iter().find(|d| d["kind"] == "ConfigMap").unwrap()["data"].clone();
    let deployments: Vec<&&Value> = base.iter().filter(|d| d["kind"] == "Deployment").collect();
    let k8s_services: Vec<&&Value> = base.iter().filter(|d| d["kind"] == "Service").collect();
    for var in config.as_object().unwrap().keys() {
        check_env(var, &code, "configmap");
    }
    let mut listen = BTreeMap::new();
    for d in &deployments {
        let name = d["metadata"]["name"].as_str().unwrap();
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        assert_eq!(&d["spec"]["selector"]["matchLabels"], labels, "{name}");
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        let command = c["args"][0].as_str().unwrap();
        assert!(
            help.contains(&format!("\n  {command} ")),
            "{name}: `{command}`"
        );
        let ports: BTreeMap<&str, u64> = c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap(),
                    p["containerPort"].as_u64().unwrap(),
                )
            })
            .collect();
        for e in c["env"].as_array().into_iter().flatten() {
            let var = e["name"].as_str().unwrap();
            check_env(var, &code, name);
            if var.ends_with("_ADDR") {
                let port = host_port(e["value"].as_str().unwrap()).1;
                assert!(
                    ports.values().any(|p| *p == u64::from(port)),
                    "{name}: {var} not a container port"
                );
            }
        }
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
        let probe_port = c["readinessProbe"]["httpGet"]["port"].as_str().unwrap();
        assert!(
            ports.contains_key(probe_port),
            "{name}: probe port {probe_port}"
        );
        listen.insert(
            name.to_owned(),
            (
                labels.clone(),
                ports
                    .clone()
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect::<BTreeMap<_, _>>(),
            ),
        );
    }
    let mut service_ports = BTreeMap::new();
    for s in &k8s_services {
        let name = s["metadata"]["name"].as_str().unwrap();
        let (labels, ports) = &listen[name];
        for (k, v) in s["spec"]["selector"].as_object().unwrap() {
            assert_eq!(&labels[k], v, "service {name} selects its deployment");
        }
        for p in s["spec"]["ports"].as_array().unwrap() {
            let target = p["targetPort"].as_str().unwrap();
            assert!(
                ports.contains_key(target),
                "service {name}: no container port {target}"
            );
            service_ports.insert((name.to_owned(), p["port"].as_u64().unwrap()), ());
        }
    }
    for var in ["AUTH_GRPC_URL", "QUERY_GRPC_URL"] {
        let (host, port) = host_port(config[var].as_str().unwrap());
        assert!(
            service_ports.contains_key(&(host.clone(), u64::from(port))),
            "{var} names no Service port: {host}:{port}"
        );
    }
    let hpa = base
        .iter()
        .find(|d| d["kind"] == "HorizontalPodAutoscaler")
        .unwrap();
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "gateway");
    assert!(
        hpa["spec"]["maxReplicas"].as_u64().unwrap() > hpa["spec"]["minReplicas"].as_u64().unwrap()
    );
    let gateway = deployments
        .iter()
        .find(|d| d["metadata"]["name"] == "gateway")
        .unwrap();
    assert!(
        gateway["spec"].get("replicas").is_none(),
        "the HPA owns the gateway's replicas"
    );
}
