//! The deployment files: Terraform tables in step with `schemas/`, Terraform formatted, the Kustomize
//! output rendering with its probes, drain and autoscaler. `terraform` and `kubectl` are on the
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

#[test]
fn kustomize_renders_probes_drain_and_autoscaler() {
    let output = Command::new("kubectl")
        .args(["kustomize", &format!("{ROOT}/infra/k8s")])
        .output()
        .expect("kubectl is needed (it is on the machine image)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rendered = String::from_utf8(output.stdout).unwrap();
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
