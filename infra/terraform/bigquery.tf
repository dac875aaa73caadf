resource "google_bigquery_dataset" "bqsync" {
  dataset_id  = var.dataset
  location    = var.location
  description = "Tables landed by bqsync (one per schemas/*.json)."
}

# The tables themselves are in tables.tf.json, generated from schemas/.
