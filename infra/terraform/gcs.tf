locals {
  bucket = var.bucket != "" ? var.bucket : "${var.project}-bqsync"
}

resource "google_storage_bucket" "bqsync" {
  name                        = local.bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  # Archive objects (TABLE/dt=…/…ndjson.gz) move to colder storage as they age.
  lifecycle_rule {
    condition {
      age                   = var.archive_nearline_after_days
      matches_storage_class = ["STANDARD"]
    }
    action {
      type          = "SetStorageClass"
      storage_class = "NEARLINE"
    }
  }

  dynamic "lifecycle_rule" {
    for_each = var.archive_delete_after_days > 0 ? [1] : []
    content {
      condition {
        age = var.archive_delete_after_days
      }
      action {
        type = "Delete"
      }
    }
  }

  # Claim checks are only needed until the worker landed the event.
  lifecycle_rule {
    condition {
      age            = var.claims_delete_after_days
      matches_prefix = ["claims/"]
    }
    action {
      type = "Delete"
    }
  }
}
