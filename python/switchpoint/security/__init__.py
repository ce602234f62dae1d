"""Who may call the sidecar and over what: tenant API keys, TLS for the gRPC port, and the
secrets no log line may show."""
