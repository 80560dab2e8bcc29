//! The deployment files run the programs only with flags they accept, and
//! the Kubernetes objects fit together: `scripts/check-deploy.py` renders
//! what `kubectl apply -k deploy/k8s` applies (`kubectl kustomize`, which
//! scripts/test.sh installs), checks that what the pods mount and the
//! Services select is there, and checks every `--flag` of every `sf-*`
//! command line, there and in the compose file, against the real binary's
//! `--help`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sf_tests::writer_support::binary;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs the checker on `deploy` with the binaries under test.
fn check(deploy: &Path) -> Output {
    let python = root().join(".cache/venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: scripts/test.sh makes it (PyYAML comes with moto)",
        python.display()
    );
    let bins = binary("sf-serve").parent().expect("bin folder").to_path_buf();
    Command::new(python)
        .arg(root().join("scripts/check-deploy.py"))
        .arg(deploy)
        .arg(bins)
        .output()
        .expect("run check-deploy.py")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

#[test]
fn the_deployment_files_name_only_flags_the_binaries_accept() {
    let out = check(&root().join("deploy"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("programs checked"), "{err}");

    // The checker bites: a misspelt flag in sf-serve's Deployment and in
    // the CronJob's shell line.
    let tmp = tempfile::tempdir().expect("tmp");
    let deploy = tmp.path().join("deploy");
    copy_dir(&root().join("deploy"), &deploy);
    let serve = deploy.join("k8s/serve.yaml");
    let text = std::fs::read_to_string(&serve).expect("serve.yaml");
    assert!(
        text.contains("- --config=/etc/sf-serve/serve.toml"),
        "serve.yaml's args changed"
    );
    std::fs::write(
        &serve,
        text.replace(
            "- --config=/etc/sf-serve/serve.toml",
            "- --config-file=/etc/sf-serve/serve.toml",
        ),
    )
    .expect("write");
    let cron = deploy.join("k8s/cronjob.yaml");
    let text = std::fs::read_to_string(&cron).expect("cronjob.yaml");
    assert!(text.contains("--progress log"), "cronjob.yaml's command changed");
    std::fs::write(&cron, text.replace("--progress log", "--progres log")).expect("write");
    // A volume naming a ConfigMap the bundle lacks, a Service targeting a
    // port its pods do not declare.
    let text = std::fs::read_to_string(&serve).expect("serve.yaml");
    assert!(
        text.contains("            name: sf-serve-config\n"),
        "serve.yaml's volume changed"
    );
    assert!(
        text.contains("      targetPort: grpc\n"),
        "serve.yaml's Service changed"
    );
    let text = text
        .replace(
            "            name: sf-serve-config\n",
            "            name: sf-serve-konfig\n",
        )
        .replace("      targetPort: grpc\n", "      targetPort: grcp\n");
    std::fs::write(&serve, text).expect("write");
    let out = check(&deploy);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("sf-serve has no flag --config-file"), "{err}");
    assert!(err.contains("sf-write has no flag --progres"), "{err}");
    assert!(err.contains("volume config: no ConfigMap sf-serve-konfig"), "{err}");
    assert!(err.contains("targets grcp, which its pods do not declare"), "{err}");

    // A resource the kustomization lists that is not there.
    let kustomization = deploy.join("k8s/kustomization.yaml");
    let text = std::fs::read_to_string(&kustomization).expect("kustomization.yaml");
    std::fs::write(
        &kustomization,
        text.replace("  - serve.yaml\n", "  - serve.yaml\n  - gone.yaml\n"),
    )
    .expect("write");
    let out = check(&deploy);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("resource gone.yaml: no such file"), "{err}");
}
