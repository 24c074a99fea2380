-- The API key an SSH key was registered with: the registration is revoked with it.
ALTER TABLE ssh_user_keys ADD COLUMN api_key_id TEXT;
