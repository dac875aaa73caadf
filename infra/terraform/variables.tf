variable "project" {
  description = "Google Cloud project id."
  type        = string
}

variable "region" {
  description = "Region of the bucket and default for resources."
  type        = string
  default     = "us-central1"
}

variable "location" {
  description = "BigQuery dataset location (as [warehouse.bigquery] location)."
  type        = string
  default     = "US"
}

variable "dataset" {
  description = "BigQuery dataset (as [warehouse.bigquery] dataset)."
  type        = string
  default     = "bqsync"
}

variable "topic" {
  type    = string
  default = "bqsync-events"
}

variable "subscription" {
  type    = string
  default = "bqsync-worker"
}

variable "dead_letter_topic" {
  type    = string
  default = "bqsync-dead-letters"
}

variable "dead_letter_subscription" {
  type    = string
  default = "bqsync-dead-letters"
}

variable "max_delivery_attempts" {
  description = "Deliveries before Pub/Sub moves a message to the dead-letter topic (5-100)."
  type        = number
  default     = 5
}

variable "ack_deadline_seconds" {
  type    = number
  default = 60
}

variable "message_ordering" {
  description = "As [bus.pubsub] ordering."
  type        = bool
  default     = false
}

variable "exactly_once_delivery" {
  description = "As [bus.pubsub] exactly_once_delivery."
  type        = bool
  default     = false
}

variable "bucket" {
  description = "Bucket for the archive and claim checks; default PROJECT-bqsync."
  type        = string
  default     = ""
}

variable "archive_nearline_after_days" {
  type    = number
  default = 30
}

variable "archive_delete_after_days" {
  description = "Archive objects are deleted after this many days (0 = keep)."
  type        = number
  default     = 0
}

variable "claims_delete_after_days" {
  description = "Claim-check objects are deleted after this many days (longer than the bus retention)."
  type        = number
  default     = 14
}

variable "k8s_namespace" {
  type    = string
  default = "bqsync"
}

variable "table_deletion_protection" {
  type    = bool
  default = true
}
