#!/usr/bin/env python3
"""Checks rendered manifests against Pod Security Standards "restricted" (Kubernetes' own
profile, as the `pod-security.kubernetes.io/enforce: restricted` namespace label enforces it),
offline: no admission controller runs here. Usage:

    kubectl kustomize deploy/k8s/overlays/production | check-restricted.py

Every pod template (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, Pod) is
checked for each rule below; the profile's rules are listed in the order of the Pod Security
Standards page (baseline, then restricted), then what this project adds. Exits 1 listing every
violation, 0 with a count of pods and rules checked.
"""

import sys

import yaml

SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}


def pod_specs(doc):
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        yield spec
    elif kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        yield spec["template"]["spec"]
    elif kind == "CronJob":
        yield spec["jobTemplate"]["spec"]["template"]["spec"]


def containers(pod):
    for field in ("initContainers", "containers", "ephemeralContainers"):
        yield from pod.get(field) or []


def check(pod):
    """(rule, violation or None) for every rule and container."""
    psc = pod.get("securityContext") or {}
    out = []

    def rule(name, ok, where=""):
        out.append((name, None if ok else where or "pod"))

    # --- baseline ---
    rule("HostProcess", not (psc.get("windowsOptions") or {}).get("hostProcess")
         and all(not ((c.get("securityContext") or {}).get("windowsOptions") or {}).get("hostProcess") for c in containers(pod)))
    rule("Host namespaces", not any(pod.get(f) for f in ("hostNetwork", "hostPID", "hostIPC")))
    for c in containers(pod):
        sc = c.get("securityContext") or {}
        name = c["name"]
        rule("Privileged containers", not sc.get("privileged"), name)
        rule("Capabilities (baseline add list)", set((sc.get("capabilities") or {}).get("add") or []) <= {
            "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
            "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}, name)
        rule("HostPorts", all(not p.get("hostPort") for p in c.get("ports") or []), name)
        rule("AppArmor", (sc.get("appArmorProfile") or {}).get("type") in (None, "RuntimeDefault", "Localhost"), name)
        se = sc.get("seLinuxOptions") or {}
        rule("SELinux", se.get("type") in SELINUX_TYPES and not se.get("user") and not se.get("role"), name)
        rule("/proc mount type", sc.get("procMount") in (None, "Default"), name)
        rule("Seccomp (baseline)", (sc.get("seccompProfile") or {}).get("type") != "Unconfined", name)
    rule("HostPath volumes", all("hostPath" not in v for v in pod.get("volumes") or []))
    rule("AppArmor (pod)", (psc.get("appArmorProfile") or {}).get("type") in (None, "RuntimeDefault", "Localhost"))
    se = psc.get("seLinuxOptions") or {}
    rule("SELinux (pod)", se.get("type") in SELINUX_TYPES and not se.get("user") and not se.get("role"))
    rule("Seccomp (baseline, pod)", (psc.get("seccompProfile") or {}).get("type") != "Unconfined")
    rule("Sysctls", all(s.get("name") in SAFE_SYSCTLS for s in psc.get("sysctls") or []))

    # --- restricted ---
    for v in pod.get("volumes") or []:
        kinds = set(v) - {"name"}
        rule("Volume types", kinds <= RESTRICTED_VOLUMES, f"volume {v.get('name')}: {sorted(kinds)}")
    for c in containers(pod):
        sc = c.get("securityContext") or {}
        name = c["name"]
        rule("Privilege escalation", sc.get("allowPrivilegeEscalation") is False, name)
        rule("Running as non-root", sc.get("runAsNonRoot") is True
             or (psc.get("runAsNonRoot") is True and sc.get("runAsNonRoot") is not False), name)
        rule("Running as non-root user", sc.get("runAsUser", psc.get("runAsUser")) != 0, name)
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        rule("Seccomp (restricted)", seccomp in ("RuntimeDefault", "Localhost"), name)
        caps = sc.get("capabilities") or {}
        rule("Capabilities (restricted: drop ALL)", "ALL" in (caps.get("drop") or []), name)
        rule("Capabilities (restricted: add only NET_BIND_SERVICE)", set(caps.get("add") or []) <= {"NET_BIND_SERVICE"}, name)
        # --- this project's own, beyond the profile ---
        rule("Read-only root filesystem (project)", sc.get("readOnlyRootFilesystem") is True, name)
    rule("No service account token (project)", pod.get("automountServiceAccountToken") is False)
    return out


def main():
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    failures, pods, rules = [], 0, set()
    namespaces = [d for d in docs if d.get("kind") == "Namespace"]
    for ns in namespaces:
        level = (ns["metadata"].get("labels") or {}).get("pod-security.kubernetes.io/enforce")
        if level != "restricted":
            failures.append(f"namespace {ns['metadata']['name']}: enforce={level}, not restricted")
    for doc in docs:
        for pod in pod_specs(doc):
            pods += 1
            for name, violation in check(pod):
                rules.add(name)
                if violation:
                    failures.append(f"{doc['kind']}/{doc['metadata']['name']}: {name}: {violation}")
    if not pods:
        failures.append("no pod template in the input")
    for f in failures:
        print(f"restricted: {f}", file=sys.stderr)
    if failures:
        return 1
    print(f"restricted: {pods} pod templates pass {len(rules)} rules "
          f"({len(namespaces)} namespace(s) enforce restricted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
