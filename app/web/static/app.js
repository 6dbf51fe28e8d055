// heritage-match web pages: photo upload with progress (camera, file, drop, paste) and printing.
// Works without this script too: the forms post and the server answers with the next page.
"use strict";

(function () {
  function setupSearch() {
    var form = document.getElementById("search-form");
    if (!form) return;
    var camera = document.getElementById("camera");
    var file = document.getElementById("file");
    var zone = document.getElementById("dropzone");
    var preview = document.getElementById("preview");
    var filename = document.getElementById("filename");
    var progress = document.getElementById("progress");
    var bar = document.getElementById("progress-bar");
    var text = document.getElementById("progress-text");
    var error = document.getElementById("search-error");
    var button = document.getElementById("search-button");
    var chosen = null;

    function choose(f) {
      if (!f) return;
      chosen = f;
      filename.textContent = f.name || "";
      if (preview.src) URL.revokeObjectURL(preview.src);
      preview.src = URL.createObjectURL(f);
      preview.hidden = false;
      error.hidden = true;
    }
    // A HEIC photo (or any file this browser cannot show) still goes to the server, which reads it.
    preview.addEventListener("error", function () {
      preview.hidden = true;
      filename.textContent = (chosen && chosen.name ? chosen.name + " · " : "") + form.dataset.noPreview;
    });
    [camera, file].forEach(function (input) {
      input.addEventListener("change", function () { choose(input.files[0]); });
    });
    zone.addEventListener("dragover", function (e) { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", function () { zone.classList.remove("over"); });
    zone.addEventListener("drop", function (e) {
      e.preventDefault();
      zone.classList.remove("over");
      if (e.dataTransfer && e.dataTransfer.files.length) choose(e.dataTransfer.files[0]);
    });
    document.addEventListener("paste", function (e) {
      var items = (e.clipboardData && e.clipboardData.files) || [];
      for (var i = 0; i < items.length; i++) {
        if (items[i].type.indexOf("image/") === 0) { choose(items[i]); e.preventDefault(); return; }
      }
    });

    function fail(message) {
      progress.hidden = true;
      button.disabled = false;
      error.textContent = message;
      error.hidden = false;
      error.setAttribute("tabindex", "-1"); // focus goes to the message, not lost with the disabled button
      error.focus();
    }

    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var data = new FormData();
      data.append("csrf_token", form.elements.csrf_token.value);
      var photo = chosen || (file.files[0] || camera.files[0]);
      if (photo) data.append("image", photo, photo.name || "photo.jpg");
      var xhr = new XMLHttpRequest();
      xhr.open("POST", form.action);
      xhr.setRequestHeader("X-HM-Async", "1");
      xhr.upload.addEventListener("progress", function (ev) {
        if (ev.lengthComputable) bar.value = Math.round((ev.loaded / ev.total) * 90);
      });
      xhr.upload.addEventListener("load", function () {
        bar.removeAttribute("value"); // indeterminate while the server searches
        text.textContent = form.dataset.searching;
      });
      xhr.addEventListener("load", function () {
        var body = null;
        try { body = JSON.parse(xhr.responseText); } catch (err) { body = null; }
        if (body && body.redirect) { window.location.assign(body.redirect); return; }
        if (xhr.status === 413) { fail(form.dataset.tooLarge); return; } // refused before the page saw it
        fail((body && typeof body.error === "string" && body.error) || form.dataset.failed);
      });
      xhr.addEventListener("error", function () { fail(form.dataset.failed); });
      progress.hidden = false;
      bar.value = 0;
      text.textContent = form.dataset.uploading;
      button.disabled = true;
      error.hidden = true;
      xhr.send(data);
    });
  }

  function setupPrint() {
    var button = document.getElementById("print-button");
    if (button) button.addEventListener("click", function () { window.print(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupSearch();
    setupPrint();
  });
})();
