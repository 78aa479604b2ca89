// Starts the vendored Swagger UI on this DLM's OpenAPI document (a file, so that no inline script is needed).
"use strict";
const openapiUrl = document.currentScript.dataset.openapi;
window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({
    url: openapiUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    validatorUrl: null,  // the public validator is another host; DLM's pages talk to DLM only
  });
});
