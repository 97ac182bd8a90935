// The API's Swagger UI, from the vendored bundle; a signed-in browser's requests carry the
// session's CSRF token, as the dashboard's do.
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var token = document.body.dataset.csrf;
    SwaggerUIBundle({
      url: "/openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
      requestInterceptor: function (request) {
        if (token) { request.headers["X-CSRF-Token"] = token; }
        return request;
      }
    });
  });
})();
