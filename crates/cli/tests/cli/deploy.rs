//! The deployment files, rendered by the real tools and checked (scripts/check-deploy.sh:
//! Compose v2's `config`, kustomize, the Kubernetes schemas, Pod Security "restricted"), then
//! read back: every container runs a real subcommand with variables the code reads, addresses
//! line up between services, probes outwait the readiness handlers, grace periods cover the
//! drain, auth's gRPC is reachable only from gateway and query. The compose topology itself
//! runs for real in scripts/compose-netns.sh (scripts/test.sh, as root).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

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

/// Runs scripts/check-deploy.sh and returns what it rendered.
async fn rendered(root: &Path) -> Value {
    let dir = std::env::temp_dir().join(format!("convex-edge-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(root.join("scripts/check-deploy.sh"))
        .env("DEPLOY_RENDER_DIR", &dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} runs: {e}",
                root.join("scripts/check-deploy.sh").display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/check-deploy.sh failed (scripts/deploy-tools.sh installs its tools):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    let parsed = edge_testkit::node("deploy-check.mjs", &[dir.display().to_string()]).await;
    std::fs::remove_dir_all(&dir).unwrap();
    parsed
}

#[tokio::test]
async fn deployment_files_render_validate_and_line_up() {
    let root = edge_testkit::workspace_root();
    let parsed = rendered(&root).await;
    let code = variables_read_by_the_code(&root);
    let help = subcommands();

    // --- docker compose (as Compose renders it) ---
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
    assert_eq!(
        host_port(&env("query", "CONVEX_URL")),
        ("convex".into(), 3210)
    );
    assert_eq!(
        host_port(&env("gateway", "REDIS_URL")),
        ("redis".into(), 6379)
    );
    // Mail: auth takes SMTP_URL and EMAIL_FROM from the environment (`.env`), empty (no mail)
    // unless set; the SMTP credentials reach no other service.
    for var in ["SMTP_URL", "EMAIL_FROM"] {
        assert_eq!(
            env("auth", var),
            "",
            "compose auth {var}: optional, unset by default"
        );
        for other in ["gateway", "query", "migrate"] {
            assert!(
                services[other]["environment"].get(var).is_none(),
                "compose {other} gets {var}"
            );
        }
    }
    assert_eq!(env("auth", "DATABASE_URL"), env("migrate", "DATABASE_URL"));
    assert_eq!(host_port(&env("auth", "DATABASE_URL")).0, "postgres");
    // One issuer: the query service learns what auth signs from auth itself (`GetJwks`), so
    // the file gives it none to drift.
    for var in ["JWT_ISSUER", "JWT_AUDIENCE"] {
        assert!(
            services["query"]["environment"].get(var).is_none(),
            "compose query gets {var}"
        );
    }
    assert_eq!(
        env("auth", "JWT_ISSUER"),
        env("gateway", "GATEWAY_TRUSTED_ORIGINS")
    );
    // The Convex backend: pinned, both origins published, matching its origins.
    let convex = &services["convex"];
    let image = convex["image"].as_str().unwrap();
    assert!(
        !image.ends_with(":latest") && image.contains(':'),
        "pin the backend image: {image}"
    );
    let published: BTreeMap<u64, String> = convex["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["target"].as_u64().unwrap(),
                p["published"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        convex["environment"]["CONVEX_CLOUD_ORIGIN"],
        format!("http://localhost:{}", published[&3210])
    );
    assert_eq!(
        convex["environment"]["CONVEX_SITE_ORIGIN"],
        format!("http://localhost:{}", published[&3211])
    );
    let deploy_demo = std::fs::read_to_string(root.join("scripts/deploy-demo.sh")).unwrap();
    assert!(deploy_demo.contains(&format!(
        "CONVEX_SELF_HOSTED_URL:-http://localhost:{}",
        published[&3210]
    )));
    let auth_http = host_port(&env("auth", "AUTH_HTTP_ADDR")).1;
    assert!(deploy_demo.contains(&format!(
        "CONVEX_EDGE_JWKS_URL:-http://auth:{auth_http}/api/auth/jwks"
    )));
    // The gateway scales behind lb: no host port or container name.
    assert!(services["gateway"].get("ports").is_none());
    assert!(services["gateway"].get("container_name").is_none());
    assert_eq!(services["lb"]["ports"][0]["published"], "8080");
    let nginx = std::fs::read_to_string(root.join("deploy/docker/nginx.conf")).unwrap();
    let gateway_port = host_port(&env("gateway", "GATEWAY_HTTP_ADDR")).1;
    assert!(nginx.contains(&format!("server gateway:{gateway_port}")));
    // The gateway trusts the private ranges to find nginx, so nginx, the edge, replaces a
    // client's own X-Forwarded-For instead of extending it: a client inside those ranges
    // cannot name another address.
    assert!(env("gateway", "GATEWAY_TRUSTED_PROXIES").contains("192.168.0.0/16"));
    assert!(nginx.contains("proxy_set_header X-Forwarded-For $remote_addr;"));
    assert!(!nginx.contains("$proxy_add_x_forwarded_for"));
    let query_port = host_port(&env("query", "QUERY_HTTP_ADDR")).1;
    assert_eq!(
        env("gateway", "QUERY_PUBLIC_URL"),
        format!("http://localhost:{query_port}")
    );
    assert_eq!(
        services["query"]["ports"][0]["published"],
        query_port.to_string()
    );

    // --- secrets stay out of git and of the image's build context ---
    let dockerignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    let gitignore = std::fs::read_to_string(root.join(".gitignore")).unwrap();
    for (file, text) in [(".dockerignore", &dockerignore), (".gitignore", &gitignore)] {
        assert!(text.lines().any(|l| l == ".env"), "{file} lacks .env");
    }
    assert!(dockerignore.lines().any(|l| l == "target"));
    let dockerfile = std::fs::read_to_string(root.join("deploy/docker/Dockerfile")).unwrap();
    assert!(dockerfile.contains("ENTRYPOINT [\"convex-edge\"]"));
    assert!(dockerfile.contains("USER 10001"));

    // --- Kubernetes, every overlay as kustomize renders it ---
    let overlays = parsed["k8s"].as_object().unwrap();
    assert_eq!(
        overlays.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from(["dev", "production"])
    );
    for (overlay, docs) in overlays {
        check_overlay(overlay, docs.as_array().unwrap(), &code, &help);
    }
    let production = overlays["production"].as_array().unwrap();
    let config = production
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .unwrap();
    let host = |var: &str| {
        config["data"][var]
            .as_str()
            .unwrap()
            .split('/')
            .nth(2)
            .unwrap()
            .to_owned()
    };
    let ingress = |name: &str| {
        production
            .iter()
            .find(|d| d["kind"] == "Ingress" && d["metadata"]["name"] == name)
            .unwrap()
    };
    assert_eq!(
        ingress("site")["spec"]["rules"][0]["host"],
        host("JWT_ISSUER")
    );
    assert_eq!(
        ingress("query")["spec"]["rules"][0]["host"],
        host("QUERY_PUBLIC_URL")
    );
    for d in production {
        for c in containers(d) {
            let image = c["image"].as_str().unwrap();
            assert!(
                image.contains('/') && !image.ends_with(":latest"),
                "production pulls {image}: set the registry and tag in the overlay"
            );
        }
    }
}

fn containers(doc: &Value) -> Vec<&Value> {
    let template = match doc["kind"].as_str() {
        Some("Deployment" | "Job") => &doc["spec"]["template"]["spec"],
        _ => return Vec::new(),
    };
    template["containers"].as_array().unwrap().iter().collect()
}

/// The seconds a service's HTTP handlers may take: its readiness check's own timeout and its
/// drain on shutdown (read from the services' code: routes/ops.rs, http.rs, lib.rs).
fn service_timings(name: &str) -> Option<(u64, u64)> {
    match name {
        "gateway" => Some((2, 10)), // auth GetJwks within 2 s; shutdown_timeout(10)
        // Convex query_ts within 2 s; sockets drain 11 s (RESTART_DRAIN), then shutdown_timeout(5)
        "query" => Some((2, 16)),
        "auth" => Some((5, 5)), // pool acquire_timeout(5); shutdown_timeout(5)
        _ => None,
    }
}

fn check_overlay(overlay: &str, docs: &[Value], code: &str, help: &str) {
    let of_kind =
        |kind: &str| -> Vec<&Value> { docs.iter().filter(|d| d["kind"] == kind).collect() };
    let name_of = |d: &Value| d["metadata"]["name"].as_str().unwrap().to_owned();
    let config = of_kind("ConfigMap")[0];
    let config_name = name_of(config);
    assert!(
        config_name.starts_with("convex-edge-config-"),
        "{overlay}: the config map is generated (hash suffix rolls pods): {config_name}"
    );
    for var in config["data"].as_object().unwrap().keys() {
        check_env(var, code, &format!("{overlay} configmap"));
    }
    let namespace = &of_kind("Namespace")[0]["metadata"];
    assert_eq!(
        namespace["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let mut listen: BTreeMap<String, (Value, BTreeMap<String, u64>)> = BTreeMap::new();
    for d in of_kind("Deployment").into_iter().chain(of_kind("Job")) {
        let name = name_of(d);
        assert_eq!(
            d["metadata"]["namespace"], namespace["name"],
            "{overlay} {name}"
        );
        let pod = &d["spec"]["template"]["spec"];
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        if d["kind"] == "Deployment" {
            assert_eq!(&d["spec"]["selector"]["matchLabels"], labels, "{name}");
        }
        let c = &pod["containers"][0];
        let command = c["args"][0].as_str().unwrap();
        assert!(
            help.contains(&format!("\n  {command} ")),
            "{name}: `{command}`"
        );
        let ports: BTreeMap<String, u64> = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_owned(),
                    p["containerPort"].as_u64().unwrap(),
                )
            })
            .collect();
        for e in c["env"].as_array().into_iter().flatten() {
            let var = e["name"].as_str().unwrap();
            check_env(var, code, &name);
            if var.ends_with("_ADDR") {
                let port = host_port(e["value"].as_str().unwrap()).1;
                assert!(
                    ports.values().any(|p| *p == u64::from(port)),
                    "{name}: {var}"
                );
            }
        }
        for source in c["envFrom"].as_array().into_iter().flatten() {
            if let Some(map) = source["configMapRef"]["name"].as_str() {
                assert_eq!(map, config_name, "{name} reads the generated config");
            }
        }
        if let Some((handler, drain)) = service_timings(&name) {
            let ready = &c["readinessProbe"];
            assert_eq!(ready["httpGet"]["path"], "/readyz", "{name}");
            assert!(
                ready["timeoutSeconds"].as_u64().unwrap() > handler,
                "{overlay} {name}: the readiness probe gives up before its handler ({handler} s)"
            );
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
            let pre_stop = c["lifecycle"]["preStop"]["exec"]["command"][1]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{name}: preStop sleep"));
            let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
            assert!(
                grace > pre_stop + drain,
                "{overlay} {name}: grace {grace} s does not cover preStop {pre_stop} s + drain {drain} s"
            );
            assert!(c["resources"]["requests"]["memory"].is_string(), "{name}");
            assert!(c["resources"]["limits"]["memory"].is_string(), "{name}");
            assert!(
                pod["topologySpreadConstraints"]
                    .as_array()
                    .is_some_and(|t| !t.is_empty()),
                "{name}: spread across nodes"
            );
        }
        listen.insert(name, (labels.clone(), ports));
    }
    // Mail: auth alone reads the optional Secret `convex-edge-mail` (SMTP_URL carries the SMTP
    // credentials); a cluster without it still starts auth, without mail.
    for d in of_kind("Deployment").into_iter().chain(of_kind("Job")) {
        let name = name_of(d);
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        let mail: BTreeMap<&str, &Value> = c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["valueFrom"]["secretKeyRef"]["name"] == "convex-edge-mail")
            .map(|e| (e["name"].as_str().unwrap(), &e["valueFrom"]["secretKeyRef"]))
            .collect();
        if name == "auth" {
            assert_eq!(
                mail.keys().copied().collect::<BTreeSet<_>>(),
                BTreeSet::from(["EMAIL_FROM", "SMTP_URL"]),
                "{overlay}: auth's mail settings"
            );
            for (var, key) in mail {
                assert_eq!(key["key"], var, "{overlay}: {var}");
                assert_eq!(key["optional"], true, "{overlay}: {var} is optional");
            }
        } else {
            assert!(mail.is_empty(), "{overlay}: {name} reads the mail Secret");
        }
    }
    assert!(
        listen.contains_key("migrate"),
        "{overlay}: migrations run as a Job"
    );
    let mut service_ports = BTreeSet::new();
    for s in of_kind("Service") {
        let name = name_of(s);
        let (labels, ports) = &listen[&name];
        for (k, v) in s["spec"]["selector"].as_object().unwrap() {
            assert_eq!(&labels[k], v, "service {name} selects its deployment");
        }
        for p in s["spec"]["ports"].as_array().unwrap() {
            let target = p["targetPort"].as_str().unwrap();
            assert!(
                ports.contains_key(target),
                "service {name}: no container port {target}"
            );
            service_ports.insert((name.clone(), p["port"].as_u64().unwrap()));
        }
    }
    // devconvex (dev) trusts exactly the issuer auth signs, with keys from a Service it can reach.
    for d in of_kind("Deployment") {
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        for e in c["env"].as_array().into_iter().flatten() {
            if e["name"] == "DEVCONVEX_AUTH_CONFIG" {
                let trusted: Value = serde_json::from_str(e["value"].as_str().unwrap()).unwrap();
                let provider = &trusted["providers"][0];
                assert_eq!(
                    provider["issuer"], config["data"]["JWT_ISSUER"],
                    "{overlay}"
                );
                let (host, port) = host_port(provider["jwks"].as_str().unwrap());
                assert!(
                    service_ports.contains(&(host.clone(), u64::from(port))),
                    "{overlay}: devconvex's JWKS {host}:{port} is no Service port"
                );
            }
        }
    }
    for var in ["AUTH_GRPC_URL", "QUERY_GRPC_URL", "CONVEX_URL"] {
        let url = config["data"][var].as_str().unwrap();
        if url.starts_with("https://") {
            continue; // Convex outside the cluster
        }
        let (host, port) = host_port(url);
        assert!(
            service_ports.contains(&(host.clone(), u64::from(port))),
            "{overlay}: {var} names no Service port: {host}:{port}"
        );
    }
    let hpas: BTreeMap<String, &Value> = of_kind("HorizontalPodAutoscaler")
        .into_iter()
        .map(|h| {
            (
                h["spec"]["scaleTargetRef"]["name"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                h,
            )
        })
        .collect();
    for name in ["gateway", "query"] {
        assert!(hpas.contains_key(name), "{overlay}: no HPA for {name}");
        let deployment = of_kind("Deployment")
            .into_iter()
            .find(|d| name_of(d) == name)
            .unwrap();
        assert!(
            deployment["spec"].get("replicas").is_none(),
            "the HPA owns {name}'s replicas"
        );
    }
    let pdbs: BTreeSet<String> = of_kind("PodDisruptionBudget")
        .into_iter()
        .map(|p| {
            p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        pdbs,
        BTreeSet::from(["auth".into(), "gateway".into(), "query".into()])
    );
    // auth's gRPC: only gateway and query pods may connect.
    let auth_policy = of_kind("NetworkPolicy")
        .into_iter()
        .find(|p| p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "auth")
        .unwrap_or_else(|| panic!("{overlay}: no NetworkPolicy for auth"));
    for rule in auth_policy["spec"]["ingress"].as_array().unwrap() {
        let ports: Vec<&str> = rule["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["port"].as_str().unwrap())
            .collect();
        if ports.contains(&"grpc") {
            let from: BTreeSet<&str> = rule["from"]
                .as_array()
                .expect("grpc is open to everyone")
                .iter()
                .map(|f| {
                    f["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                        .as_str()
                        .unwrap()
                })
                .collect();
            assert_eq!(from, BTreeSet::from(["gateway", "query"]), "{overlay}");
        }
    }
    let query_ingress = of_kind("Ingress")
        .into_iter()
        .find(|i| {
            i["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "query"
        })
        .unwrap_or_else(|| panic!("{overlay}: no Ingress for the query service"));
    let timeout =
        query_ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]
            .as_str()
            .unwrap();
    assert!(
        timeout.parse::<u64>().unwrap() >= 3600,
        "WebSockets stay open"
    );
}
