-- Kubernetes and HTTP connections: their per-connection options.
ALTER TABLE connections ADD COLUMN kubernetes_options TEXT NOT NULL DEFAULT '{}';
ALTER TABLE connections ADD COLUMN http_options TEXT NOT NULL DEFAULT '{}';
