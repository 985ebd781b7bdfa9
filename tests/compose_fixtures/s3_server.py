"""TEST FIXTURE: moto's S3 server on :9000 with the /health route that RustFS answers and
docker-compose.yml's health check asks for."""

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

# As `moto_server` does: each request goes to the service its signature names (S3 here).
s3 = DomainDispatcherApplication(create_backend_app)


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/health":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    return s3(environ, start_response)


if __name__ == "__main__":
    run_simple("0.0.0.0", 9000, app, threaded=True)
