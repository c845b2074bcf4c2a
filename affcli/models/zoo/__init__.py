"""The built-in models: every module here registers one model (see affcli.models)."""
