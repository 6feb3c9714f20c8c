"""Drives a real pgAdmin 4 (desktop mode, from the pgadmin4 package) through its HTTP API
the way its object browser does when a user connects to a server and opens a table:
register and connect the server, list databases, schemas, tables, columns, indexes,
constraints, roles, and show the table's properties and SQL.

Usage: pgadmin_browse.py PGADMIN_URL PG_HOST PG_PORT USER PASSWORD TABLE
Prints "done" at the end; exits non-zero with pgAdmin's answer on any failure.
"""

import http.cookiejar
import json
import sys
import urllib.request

base, host, port, user, password, table = sys.argv[1:7]
opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with opener.open(request, timeout=60) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{method} {path}: HTTP {e.code}: {e.read().decode()[:2000]}")
    try:
        return json.loads(text)
    except ValueError:
        return text


def nodes(path):
    return call("GET", path)["data"]


def find(items, label):
    for item in items:
        if item["label"] == label:
            return item["_id"]
    raise SystemExit(f"{label!r} not in {[i['label'] for i in items]}")


call("GET", "/browser/")
created = call("POST", "/browser/server/obj/1/", {
    "name": "audited", "db": "postgres", "host": host, "port": int(port), "username": user,
    "password": password, "role": None, "connect_now": True, "save_password": False,
    "connection_params": [{"name": "sslmode", "value": "disable"}],
})
sid = created["node"]["_id"]
call("GET", f"/browser/server/obj/1/{sid}")
did = find(nodes(f"/browser/database/nodes/1/{sid}/"), "postgres")
call("GET", f"/browser/database/obj/1/{sid}/{did}")
scid = find(nodes(f"/browser/schema/nodes/1/{sid}/{did}/"), "public")
call("GET", f"/browser/schema/obj/1/{sid}/{did}/{scid}")
tid = find(nodes(f"/browser/table/nodes/1/{sid}/{did}/{scid}/"), table)
call("GET", f"/browser/table/obj/1/{sid}/{did}/{scid}/{tid}")
call("GET", f"/browser/table/sql/1/{sid}/{did}/{scid}/{tid}")
for child in ("column", "index", "primary_key", "foreign_key", "check_constraint", "trigger", "rule"):
    call("GET", f"/browser/{child}/nodes/1/{sid}/{did}/{scid}/{tid}/")
call("GET", f"/browser/role/nodes/1/{sid}/")
call("GET", f"/browser/function/nodes/1/{sid}/{did}/{scid}/")
call("GET", f"/browser/view/nodes/1/{sid}/{did}/{scid}/")
print("done", flush=True)
