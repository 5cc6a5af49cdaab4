// The editor canvas: what htmx alone cannot do. Drag a node (the drop is POSTed), click to
// select, click an output port then a node to connect, and keys: Delete, Ctrl+S, Ctrl+Z,
// Escape, the arrows (move the selected node). Every change goes to the server, which answers with the editor re-rendered.
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

  // The node's settings form is sent when it is done with, not on every keystroke (a
  // re-render while typing would lose what is being typed): a select or checkbox changed,
  // Enter in a field, or focus leaving the form after an edit.
  var dirty = false;

  function applySettings() {
    var form = document.getElementById("node-form");
    if (!form || !dirty) return;
    dirty = false;
    var values = htmx.values(form);
    var path = form.getAttribute("hx-post").split("/edit/")[1];
    post(path, values);
  }

  document.addEventListener("input", function (event) {
    if (event.target.closest && event.target.closest("#node-form")) dirty = true;
  });
  document.addEventListener("change", function (event) {
    var form = event.target.closest && event.target.closest("#node-form");
    if (!form) return;
    dirty = true;
    if (event.target.tagName === "SELECT" || event.target.type === "checkbox") applySettings();
  });
  document.addEventListener("focusout", function (event) {
    var form = event.target.closest && event.target.closest("#node-form");
    if (form && !(event.relatedTarget && form.contains(event.relatedTarget))) applySettings();
  });

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

  // The last run's node states (pushed over the WebSocket into the run strip) on the canvas:
  // a colour and an icon per node.
  var ICONS = { queued: "…", running: "◐", waiting: "⏸", succeeded: "✓", failed: "✗",
                skipped: "–", cancelled: "✗" };
  var RANK = { failed: 6, running: 5, waiting: 4, queued: 3, succeeded: 2, cancelled: 1, skipped: 0 };

  function syncRun() {
    var states = {};
    document.querySelectorAll(".run-strip li.node").forEach(function (item) {
      var key = (item.querySelector(".node-id") || {}).textContent || "";
      var match = /\bstatus-(\w+)/.exec(item.className);
      if (!key || !match) return;
      var id = key.split("[")[0];
      var status = match[1];
      if (!(id in states) || (RANK[status] || 0) > (RANK[states[id]] || 0)) states[id] = status;
    });
    document.querySelectorAll("#editor g.node").forEach(function (node) {
      var status = states[node.dataset.node];
      node.classList.forEach(function (name) {
        if (name.indexOf("run-") === 0) node.classList.remove(name);
      });
      var icon = node.querySelector(".run-icon");
      if (status) node.classList.add("run-" + status);
      if (icon) icon.textContent = status ? (ICONS[status] || "") : "";
      node.dataset.run = status || "";
    });
  }
  document.addEventListener("DOMContentLoaded", syncRun);
  document.addEventListener("htmx:afterSettle", syncRun);
  document.addEventListener("htmx:oobAfterSwap", syncRun);
  document.addEventListener("htmx:wsAfterMessage", syncRun);
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
      applySettings();  // queued first, so the save includes it
      post("save");
      return;
    }
    if (event.key === "Enter" && event.target.tagName === "INPUT"
        && event.target.closest("#node-form")) {
      event.preventDefault();
      dirty = true;
      applySettings();
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
    } else if (/^Arrow(Left|Right|Up|Down)$/.test(event.key) && root.dataset.selected) {
      // move the selected node by 20 (or 100 with Shift) without a mouse
      var selected = root.querySelector('g.node[data-node="' + CSS.escape(root.dataset.selected) + '"]');
      if (!selected) return;
      event.preventDefault();
      var at = selected.transform.baseVal.consolidate().matrix;
      var step = event.shiftKey ? 100 : 20;
      var dx = { ArrowLeft: -step, ArrowRight: step }[event.key] || 0;
      var dy = { ArrowUp: -step, ArrowDown: step }[event.key] || 0;
      post("nodes/" + encodeURIComponent(root.dataset.selected) + "/move",
           { x: Math.max(0, at.e + dx), y: Math.max(0, at.f + dy) });
    } else if (event.key === "Enter") {
      var node = event.target.closest && event.target.closest("g.node");
      var edge = event.target.closest && event.target.closest("g.edge");
      if (node) post("select", { node: node.dataset.node });
      else if (edge) post("select", { edge: edge.dataset.edge });
    }
  });
})();
