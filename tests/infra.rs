//! The deployment files: Terraform tables in step with `schemas/`, Terraform formatted, the Kustomize
//! output rendering with its probes, drain and autoscaler; and the binary saying what it was built
//! with (CI runs this file on the worker image's gcp-only binary too). `terraform` and `kubectl` are on the
//! machine image; without them these tests fail (providers cannot be downloaded here, so `terraform
//! validate` is not run).

// Google backends only: built with the `gcp` feature (the default, and the worker image).
#![cfg(feature = "gcp")]

mod common;

use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn terraform_tables_match_the_schemas() {
    let catalog = common::catalog();
    let generated = bqsync::infra::terraform_tables_text(&catalog);
    let committed = std::fs::read_to_string(format!("{ROOT}/infra/terraform/tables.tf.json")).unwrap_or_default();
    assert!(
        generated == committed,
        "infra/terraform/tables.tf.json drifted from schemas/: run\n  \
         cargo run --release -- infra terraform-tables > infra/terraform/tables.tf.json"
    );
    let tables: serde_json::Value = serde_json::from_str(&committed).unwrap();
    let resources = tables["resource"]["google_bigquery_table"].as_object().unwrap();
    assert_eq!(resources.len(), catalog.tables().count());
    let atoms: serde_json::Value = serde_json::from_str(resources["atoms"]["schema"].as_str().unwrap()).unwrap();
    let names: Vec<&str> = atoms.as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"_bqsync_event_id") && names.contains(&"created_at"), "{names:?}");
    assert_eq!(resources["atoms"]["time_partitioning"][0]["field"], "created_at");
}

#[test]
fn terraform_is_formatted() {
    let output = Command::new("terraform")
        .args(["fmt", "-check", "-recursive", "-diff"])
        .current_dir(format!("{ROOT}/infra/terraform"))
        .output()
        .expect("terraform is needed (it is on the machine image)");
    assert!(output.status.success(), "terraform fmt -check:\n{}", String::from_utf8_lossy(&output.stdout));
}

/// `kubectl kustomize` of a folder of infra/k8s.
fn kustomize(folder: &str) -> String {
    let output = Command::new("kubectl")
        .args(["kustomize", &format!("{ROOT}/infra/k8s/{folder}")])
        .output()
        .expect("kubectl is needed (it is on the machine image)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// Every container's image is the one scripts/image.sh builds, pinned by digest, and every object is
/// in the namespace.
fn assert_images_pinned_and_namespaced(rendered: &str) {
    let images: Vec<&str> = rendered.lines().filter_map(|l| l.trim().strip_prefix("image: ")).collect();
    assert!(!images.is_empty());
    for image in images {
        assert_eq!(
            image, "REGION-docker.pkg.dev/PROJECT/bqsync/bqsync@sha256:IMAGE_DIGEST",
            "every image pinned by digest"
        );
    }
    let objects = rendered.split("\n---\n").filter(|o| !o.contains("kind: Namespace"));
    for object in objects {
        assert!(object.contains("namespace: bqsync"), "not in the namespace:\n{object}");
    }
}

/// The example overlay adds the optional roles: the applier CronJob (and workers that leave the
/// apply to it) and the loader; they get the same image and namespace as the rest.
#[test]
fn kustomize_overlay_adds_the_applier_and_the_loader() {
    let rendered = kustomize("overlays/example");
    assert_images_pinned_and_namespaced(&rendered);
    assert!(rendered.contains("kind: CronJob"), "{rendered}");
    assert!(rendered.contains("- apply"), "the CronJob runs `bqsync apply`");
    assert!(rendered.contains("concurrencyPolicy: Forbid"), "never two applies at once");
    assert!(rendered.contains("name: bqsync-loader") && rendered.contains("- load"), "the loader runs `bqsync load`");
    let worker = rendered
        .split("\n---\n")
        .find(|o| o.contains("name: bqsync-worker\n") && o.contains("kind: Deployment"))
        .unwrap();
    assert!(worker.contains("BQSYNC__WAREHOUSE__BIGQUERY__APPLIER"), "workers leave the apply to the CronJob");
    let configs: Vec<&str> = rendered.lines().filter(|l| l.trim().starts_with("name: bqsync-config")).collect();
    assert!(
        configs.windows(2).all(|w| w[0].trim() == w[1].trim()),
        "every role mounts the generated ConfigMap: {configs:?}"
    );
}

#[test]
fn kustomize_renders_probes_drain_and_autoscaler() {
    let rendered = kustomize("");
    assert_images_pinned_and_namespaced(&rendered);
    for needle in [
        "kind: Deployment",
        "path: /healthz",
        "path: /readyz",
        "terminationGracePeriodSeconds: 90",
        "BQSYNC__ADMIN__DRAIN_TIMEOUT_SECS",
        "kind: HorizontalPodAutoscaler",
        "pubsub.googleapis.com|subscription|num_undelivered_messages",
        "kind: PodDisruptionBudget",
        "iam.gke.io/gcp-service-account",
        "runAsNonRoot: true",
        "kind: ConfigMap",
    ] {
        assert!(rendered.contains(needle), "rendered manifests lack {needle:?}");
    }
    // The ConfigMap carries a config bqsync accepts.
    let config_start = rendered.find("bqsync.toml: |").expect("config in the ConfigMap");
    let block: String = rendered[config_start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &block).unwrap();
    bqsync::config::Config::load(Some(file.path()), std::iter::empty())
        .unwrap_or_else(|e| panic!("the ConfigMap's config: {e}\n{block}"));
}

/// `--version` names the build's features.
#[test]
fn the_binary_names_its_features() {
    let output = Command::new(env!("CARGO_BIN_EXE_bqsync")).arg("--version").output().unwrap();
    let version = String::from_utf8(output.stdout).unwrap();
    let expected = if cfg!(feature = "embedded") { "(features: embedded, gcp)" } else { "(features: gcp)" };
    assert!(version.contains(expected), "{version}");
}

/// The gcp-only build refuses the embedded default at start, naming the feature it needs, and runs
/// commands that need neither backend.
#[cfg(not(feature = "embedded"))]
#[test]
fn the_gcp_only_build_names_the_feature_the_embedded_default_needs() {
    let project = common::Project::new("");
    for args in [&["run", "--until-drained"][..], &["setup"], &["dlq", "list"], &["sql", "SELECT 1"]] {
        let output = project.command(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "bqsync {args:?} succeeded without DuckDB");
        assert!(stderr.contains("needs bqsync built with the `embedded` feature"), "bqsync {args:?}: {stderr}");
        assert!(stderr.contains("built with: gcp"), "bqsync {args:?}: {stderr}");
    }
    let output = project.command(&["config"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}
