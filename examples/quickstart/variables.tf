variable "west_address" {
  description = "API address (host:port) of a server of the west cluster."
  type        = string
}

variable "west_token" {
  description = "Admin token of the west cluster."
  type        = string
  sensitive   = true
}

variable "west_ca_file" {
  description = "Trust bundle (ca.pem) of the west cluster."
  type        = string
}

variable "east_address" {
  description = "API address (host:port) of a server of the east cluster."
  type        = string
}

variable "east_token" {
  description = "Admin token of the east cluster."
  type        = string
  sensitive   = true
}

variable "east_ca_file" {
  description = "Trust bundle (ca.pem) of the east cluster."
  type        = string
}
