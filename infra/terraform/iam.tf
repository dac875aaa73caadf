# Least privilege: the worker reads its subscriptions, publishes poison to the dead-letter topic,
# writes the dataset's tables and runs jobs, and writes/reads archive and claim objects; the producer
# publishes events and writes claim objects. Both are bound to Kubernetes service accounts through
# Workload Identity.

resource "google_service_account" "worker" {
  account_id   = "bqsync-worker"
  display_name = "bqsync worker"
}

resource "google_service_account" "producer" {
  account_id   = "bqsync-producer"
  display_name = "bqsync producer"
}

resource "google_pubsub_subscription_iam_member" "worker_subscriber" {
  for_each     = { main = google_pubsub_subscription.worker.id, dead = google_pubsub_subscription.dead_letters.id }
  subscription = each.value
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${google_service_account.worker.email}"
}

# `bqsync work` checks that its subscriptions exist at start-up.
resource "google_pubsub_subscription_iam_member" "worker_viewer" {
  for_each     = { main = google_pubsub_subscription.worker.id, dead = google_pubsub_subscription.dead_letters.id }
  subscription = each.value
  role         = "roles/pubsub.viewer"
  member       = "serviceAccount:${google_service_account.worker.email}"
}

resource "google_pubsub_topic_iam_member" "worker_dead_letter_publisher" {
  topic  = google_pubsub_topic.dead_letters.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.worker.email}"
}

resource "google_pubsub_topic_iam_member" "producer_publisher" {
  topic  = google_pubsub_topic.events.id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.producer.email}"
}

resource "google_bigquery_dataset_iam_member" "worker_editor" {
  dataset_id = google_bigquery_dataset.bqsync.dataset_id
  role       = "roles/bigquery.dataEditor"
  member     = "serviceAccount:${google_service_account.worker.email}"
}

resource "google_project_iam_member" "worker_job_user" {
  project = var.project
  role    = "roles/bigquery.jobUser"
  member  = "serviceAccount:${google_service_account.worker.email}"
}

# objectUser: create, read, overwrite (a retried archive or claim rewrites the same name).
resource "google_storage_bucket_iam_member" "worker_objects" {
  bucket = google_storage_bucket.bqsync.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.worker.email}"
}

resource "google_storage_bucket_iam_member" "producer_objects" {
  bucket = google_storage_bucket.bqsync.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.producer.email}"
}

resource "google_service_account_iam_member" "workload_identity" {
  for_each = {
    worker   = google_service_account.worker.name
    producer = google_service_account.producer.name
  }
  service_account_id = each.value
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project}.svc.id.goog[${var.k8s_namespace}/bqsync-${each.key}]"
}
