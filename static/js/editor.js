// The editor canvas: what htmx alone cannot do. Drag a node (the drop is POSTed), click to
// select, click an output port then a node to connect, and keys: Delete, Ctrl+S, Ctrl+Z,
// Escape. Every change goes to the server, which answers with the editor re-rendered.
(function () {
  "use strict";

  var pending = null; // {from, output} while connecting
  var drag = null;

  function editor() { return document.getElementById("editor"); }

  // One request at a time, in order: a quick Ctrl+S after a drag must not be dropped
  // because the editor it targeted was replaced meanwhile.
  var queue = Promise.resolve();

  function post(path, values) {
    queue = queue.then(function () {
      var root = editor();
      if (!root) return null;
      return htmx.ajax("POST", root.dataset.base + "/" + path, {
        target: "#editor", swap: "outerHTML", values: values || {},
        headers: { "X-CSRFToken": root.dataset.csrf }
      });
    }).catch(function () { return null; });
  }

  function svgPoint(svg, event) {
    var point = svg.createSVGPoint();
    point.x = event.clientX;
    point.y = event.clientY;
    return point.matrixTransform(svg.getScreenCTM().inverse());
  }

  function setConnecting(from, output, port) {
    pending = from ? { from: from, output: output } : null;
    document.querySelectorAll(".port.out.armed").forEach(function (p) { p.classList.remove("armed"); });
    var root = editor();
    if (root) root.classList.toggle("connecting", !!pending);
    if (port) port.classList.add("armed");
  }

  document.addEventListener("pointerdown", function (event) {
    var port = event.target.closest && event.target.closest(".port.out");
    var node = event.target.closest && event.target.closest("g.node");
    if (port && node) {
      event.preventDefault();
      setConnecting(node.dataset.node, port.dataset.output, port);
      return;
    }
    if (!node || event.button !== 0) return;
    var svg = node.ownerSVGElement;
    var start = svgPoint(svg, event);
    var origin = node.transform.baseVal.consolidate().matrix;
    drag = { node: node, svg: svg, dx: start.x - origin.e, dy: start.y - origin.f,
             x: origin.e, y: origin.f, moved: false, sx: event.clientX, sy: event.clientY };
    node.setPointerCapture(event.pointerId);
  });

  document.addEventListener("pointermove", function (event) {
    if (!drag) return;
    if (!drag.moved && Math.abs(event.clientX - drag.sx) + Math.abs(event.clientY - drag.sy) < 4) return;
    drag.moved = true;
    var at = svgPoint(drag.svg, event);
    drag.x = Math.max(0, Math.round(at.x - drag.dx));
    drag.y = Math.max(0, Math.round(at.y - drag.dy));
    drag.node.setAttribute("transform", "translate(" + drag.x + "," + drag.y + ")");
  });

  document.addEventListener("pointerup", function () {
    if (!drag) return;
    var done = drag;
    drag = null;
    var id = done.node.dataset.node;
    if (done.moved) {
      post("nodes/" + encodeURIComponent(id) + "/move", { x: done.x, y: done.y });
    } else if (pending && pending.from !== id) {
      var values = { from: pending.from, output: pending.output, to: id };
      setConnecting(null);
      post("connections", values);
    } else {
      setConnecting(null);
      post("select", { node: id });
    }
  });

  // A graph a little wider than the canvas is shown whole (scaled down to at most 65%);
  // a bigger one keeps its size and scrolls.
  function fit() {
    var svg = document.querySelector("#editor svg.canvas");
    if (!svg) return;
    var wrap = svg.parentElement;
    var box = svg.viewBox.baseVal;
    var room = wrap.clientWidth - 2;
    var scale = Math.min(1, Math.max(0.65, room / box.width));
    svg.setAttribute("width", Math.round(box.width * scale));
    svg.setAttribute("height", Math.round(box.height * scale));
  }
  document.addEventListener("DOMContentLoaded", fit);
  document.addEventListener("htmx:afterSettle", fit);
  window.addEventListener("resize", fit);

  document.addEventListener("click", function (event) {
    var edge = event.target.closest && event.target.closest("g.edge");
    if (edge) post("select", { edge: edge.dataset.edge });
  });

  document.addEventListener("keydown", function (event) {
    var root = editor();
    if (!root) return;
    var typing = /^(INPUT|TEXTAREA|SELECT)$/.test(event.target.tagName);
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "s") {
      event.preventDefault();
      if (typing) event.target.dispatchEvent(new Event("change", { bubbles: true }));
      setTimeout(function () { post("save"); }, typing ? 150 : 0);
      return;
    }
    if (typing) return;
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
      event.preventDefault();
      post("undo");
    } else if (event.key === "Escape") {
      setConnecting(null);
      post("select", {});
    } else if (event.key === "Delete" || event.key === "Backspace") {
      if (root.dataset.selected) {
        event.preventDefault();
        post("nodes/" + encodeURIComponent(root.dataset.selected) + "/delete");
      } else if (root.dataset.selectedEdge !== "") {
        event.preventDefault();
        post("connections/" + root.dataset.selectedEdge + "/delete");
      }
    } else if (event.key === "Enter") {
      var node = event.target.closest && event.target.closest("g.node");
      var edge = event.target.closest && event.target.closest("g.edge");
      if (node) post("select", { node: node.dataset.node });
      else if (edge) post("select", { edge: edge.dataset.edge });
    }
  });
})();
