-- wrk script for bench/proxy.py: POST a small chat message as JSON.
wrk.method = "POST"
wrk.body = '{"message":"x","sessionId":"bench"}'
wrk.headers["Content-Type"] = "application/json"
