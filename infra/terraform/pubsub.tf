resource "google_pubsub_topic" "events" {
  name = var.topic
}

resource "google_pubsub_topic" "dead_letters" {
  name = var.dead_letter_topic
}

resource "google_pubsub_subscription" "worker" {
  name                    = var.subscription
  topic                   = google_pubsub_topic.events.id
  ack_deadline_seconds    = var.ack_deadline_seconds
  enable_message_ordering = var.message_ordering
  # As [bus.pubsub] exactly_once_delivery: acks become confirmed acks.
  enable_exactly_once_delivery = var.exactly_once_delivery

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letters.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  retry_policy {
    minimum_backoff = "10s"
    maximum_backoff = "600s"
  }

  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "dead_letters" {
  name                 = var.dead_letter_subscription
  topic                = google_pubsub_topic.dead_letters.id
  ack_deadline_seconds = 60

  expiration_policy {
    ttl = ""
  }
}

# The Pub/Sub service agent forwards undeliverable messages: it must publish to the dead-letter
# topic and acknowledge on the source subscription.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  topic  = google_pubsub_topic.dead_letters.id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_forwarder" {
  subscription = google_pubsub_subscription.worker.id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}
