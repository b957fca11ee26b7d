"""hack/node: a real Kubernetes node on this machine (see node.py)."""
