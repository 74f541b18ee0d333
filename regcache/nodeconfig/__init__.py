"""Pointing a node's containerd at the cache, and undoing it exactly.

`hosts_toml` says what one hosts.toml holds (parsed from the operator's arguments), `hosts_dir`
writes such files into containerd's hosts dir and keeps what it needs to put the old ones back,
`containerd_config` reads containerd's config to tell whether it looks at that dir at all. The
command line (`python -m regcache node-config`) is `regcache.commands.node_config`; the Helm
chart's node-config DaemonSet runs that same command on every node.
"""
