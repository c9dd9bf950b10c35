"""What picker knows about the pods: the datastore (pools, endpoints, their state) and the
background writers that keep it current (metric scrapers, KV-cache event subscribers).

Background writers write endpoint state; the request path only reads it (plus picker's
own in-flight counts, which the director keeps)."""
