"""Replay the Pods KubeRay builds with Docker, as a kubelet would (see README.md here)."""
