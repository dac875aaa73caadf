# bqsync's Google Cloud resources. Tables come from schemas/ through tables.tf.json, which
# `bqsync infra terraform-tables` generates (a test fails when it drifts from schemas/).
#
#   terraform init && terraform apply -var project=my-project
#
# Validated here with `terraform fmt -check` only: providers cannot be downloaded on the
# development machines, so `terraform validate` and `plan` have not run.

terraform {
  required_version = ">= 1.5"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0"
    }
  }
}

provider "google" {
  project = var.project
  region  = var.region
}

data "google_project" "this" {
  project_id = var.project
}

locals {
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}
