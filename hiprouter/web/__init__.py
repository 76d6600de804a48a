"""The node's HTTP side: Prometheus metrics and a read-only status page (`web:` in
config.yaml), served by one small WSGI server in the `serve` process (server.py)."""
