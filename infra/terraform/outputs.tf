output "worker_service_account" {
  value = google_service_account.worker.email
}

output "producer_service_account" {
  value = google_service_account.producer.email
}

output "bucket" {
  value = google_storage_bucket.bqsync.name
}

output "subscription" {
  value = google_pubsub_subscription.worker.id
}
