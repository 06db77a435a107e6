#!/usr/bin/env bash
# The one way oms puts nginx in front of several instances — for
# `just up postgres N`, the tests and the benchmark:
#   scripts/nginx.sh PORT DIR UPSTREAM_PORT...
# Runs in the foreground as nginx itself (exec: its pid is nginx's master),
# listening on 127.0.0.1:PORT, keeping its config and temp files in DIR, and
# balancing round robin over 127.0.0.1:UPSTREAM_PORT for each one given.
set -euo pipefail
port="${1:?usage: nginx.sh PORT DIR UPSTREAM_PORT...}"
dir="${2:?usage: nginx.sh PORT DIR UPSTREAM_PORT...}"
shift 2
(( $# > 0 )) || { echo "nginx.sh: no upstream port given" >&2; exit 2; }
bin="$(command -v nginx || echo /usr/sbin/nginx)"
[[ -x $bin ]] || { echo "nginx.sh: nginx is not installed (scripts/install.sh nginx)" >&2; exit 2; }

servers=""
for upstream in "$@"; do
  # One failed connection takes an instance out for 2 s, so a killed or
  # restarting instance costs a client one retried connect, not an error.
  servers+="    server 127.0.0.1:$upstream max_fails=1 fail_timeout=2s;"$'\n'
done
mkdir -p "$dir"
cat >"$dir/nginx.conf" <<NGINX
daemon off;
worker_processes 1;
error_log stderr warn;
pid $dir/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  upstream oms {
$servers    keepalive 64;
  }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://oms;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      # A POST is retried on the next instance only when it never reached
      # one (connection refused); the client's client_order_id makes any
      # retry of its own safe.
      proxy_next_upstream error timeout;
      proxy_connect_timeout 1s;
      # oms answers within its produce timeout (2 s) or read wait (1 s): an
      # instance silent for longer is frozen or overloaded, and this takes
      # it out of the rotation (the client gets a 504 and retries).
      proxy_read_timeout 5s;
    }
  }
}
NGINX
exec "$bin" -c "$dir/nginx.conf" -p "$dir"
