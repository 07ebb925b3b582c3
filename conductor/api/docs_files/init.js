// Swagger UI over this server's own description (no inline script: the page's
// Content-Security-Policy allows only this origin's files).
window.ui = SwaggerUIBundle({
  url: "openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  // The token typed into "Authorize" lives in this page only, not in storage.
  persistAuthorization: false,
  // No call to swagger.io's validator: nothing leaves this origin.
  validatorUrl: null,
});
