"""The `meshguard web` page (docs/web.md): index.html, web.css and web.js, shipped as package
data, and the routing that serves them and the status document (routes.py). The HTTP server
itself is in cli/web_command.py."""
