// The API page (/docs): reads /openapi.json from this server and renders it, grouped by tag:
// each operation's method, path, summary, description, authentication, parameters, request
// body and responses, with their schemas ($ref resolved). Written for the web UI's strict CSP:
// no inline script or style, no eval, nothing from another origin, and every text from the
// document is set with textContent (never as HTML).
"use strict";

(function () {
  const METHODS = ["get", "put", "post", "delete", "patch", "head", "options"];
  const MAX_DEPTH = 6;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // A description: paragraphs on blank lines, `code` spans; nothing else is interpreted.
  function prose(text, className) {
    const wrap = el("div", className || "desc");
    String(text || "").split(/\n\s*\n/).forEach(function (para) {
      if (!para.trim()) return;
      const p = el("p");
      para.split("`").forEach(function (part, index) {
        p.appendChild(index % 2 === 1 ? el("code", null, part) : document.createTextNode(part));
      });
      wrap.appendChild(p);
    });
    return wrap;
  }

  function inline(text) {
    const span = el("span", "desc");
    String(text || "").split("`").forEach(function (part, index) {
      span.appendChild(index % 2 === 1 ? el("code", null, part) : document.createTextNode(part));
    });
    return span;
  }

  function refName(ref) {
    return String(ref).split("/").pop();
  }

  function resolve(doc, schema) {
    let seen = 0;
    while (schema && schema.$ref && seen < 20) {
      const parts = String(schema.$ref).replace(/^#\//, "").split("/");
      let at = doc;
      for (const part of parts) at = at && at[part.replace(/~1/g, "/").replace(/~0/g, "~")];
      schema = at;
      seen += 1;
    }
    return schema || {};
  }

  // A one-line type: `string`, `integer | null`, `Target`, `array of AgentView`, ...
  function typeName(doc, schema) {
    if (!schema) return "any";
    if (schema.$ref) return refName(schema.$ref);
    const variants = schema.oneOf || schema.anyOf;
    if (variants) return variants.map(function (s) { return typeName(doc, s); }).join(" | ");
    if (schema.allOf && schema.allOf.length === 1) return typeName(doc, schema.allOf[0]);
    let types = schema.type;
    if (Array.isArray(types)) types = types.slice();
    else if (types) types = [types];
    else if (schema.properties) types = ["object"];
    else if (schema.enum) types = ["enum"];
    else return "any";
    return types.map(function (t) {
      if (t === "array") return "array of " + typeName(doc, schema.items);
      if (t === "object" && schema.additionalProperties && typeof schema.additionalProperties === "object") {
        return "map of " + typeName(doc, schema.additionalProperties);
      }
      return schema.format && t !== "null" ? t + " (" + schema.format + ")" : t;
    }).join(" | ");
  }

  function constraints(schema) {
    const out = [];
    if (!schema) return out;
    if (schema.enum) out.push("one of: " + schema.enum.map(function (v) { return JSON.stringify(v); }).join(", "));
    if (schema.const !== undefined) out.push("exactly " + JSON.stringify(schema.const));
    if (schema.minimum !== undefined) out.push("min " + schema.minimum);
    if (schema.exclusiveMinimum !== undefined) out.push("> " + schema.exclusiveMinimum);
    if (schema.maximum !== undefined) out.push("max " + schema.maximum);
    if (schema.exclusiveMaximum !== undefined) out.push("< " + schema.exclusiveMaximum);
    if (schema.minLength !== undefined) out.push("length ≥ " + schema.minLength);
    if (schema.maxLength !== undefined) out.push("length ≤ " + schema.maxLength);
    if (schema.pattern !== undefined) out.push("pattern " + schema.pattern);
    if (schema.minItems !== undefined) out.push("items ≥ " + schema.minItems);
    if (schema.maxItems !== undefined) out.push("items ≤ " + schema.maxItems);
    if (schema.minProperties !== undefined) out.push("keys ≥ " + schema.minProperties);
    if (schema.maxProperties !== undefined) out.push("keys ≤ " + schema.maxProperties);
    if (schema.default !== undefined) out.push("default " + JSON.stringify(schema.default));
    if (schema.additionalProperties === false) out.push("no other keys");
    return out;
  }

  // The tree of a schema's properties, with $refs opened up to MAX_DEPTH (and never into a
  // schema already open on the way down).
  function schemaTree(doc, schema, depth, open) {
    const list = el("ul", "schema");
    let target = schema;
    let opened = open;
    if (schema && schema.$ref) {
      if (open.indexOf(schema.$ref) >= 0 || depth > MAX_DEPTH) return list;
      opened = open.concat([schema.$ref]);
      target = resolve(doc, schema);
    }
    if (!target) return list;
    if (target.type === "array" || (Array.isArray(target.type) && target.type.indexOf("array") >= 0)) {
      if (target.items) {
        const li = el("li");
        li.appendChild(el("span", "constraint", "each item: "));
        li.appendChild(el("span", "type", typeName(doc, target.items)));
        const sub = schemaTree(doc, target.items, depth + 1, opened);
        if (sub.childNodes.length) li.appendChild(sub);
        list.appendChild(li);
      }
      return list;
    }
    (target.allOf || []).forEach(function (part) {
      Array.prototype.slice.call(schemaTree(doc, part, depth, opened).childNodes).forEach(function (node) {
        list.appendChild(node);
      });
    });
    const variants = target.oneOf || target.anyOf;
    if (variants) {
      const li = el("li");
      li.appendChild(el("span", "constraint", target.oneOf ? "exactly one of:" : "any of:"));
      const alternatives = el("ul", "schema");
      variants.forEach(function (variant) {
        const alt = el("li");
        alt.appendChild(el("span", "type", typeName(doc, variant)));
        const resolved = resolve(doc, variant);
        if (resolved.description) { alt.appendChild(document.createTextNode(" ")); alt.appendChild(inline(resolved.description)); }
        const sub = schemaTree(doc, variant, depth + 1, opened);
        if (sub.childNodes.length) alt.appendChild(sub);
        alternatives.appendChild(alt);
      });
      li.appendChild(alternatives);
      list.appendChild(li);
    }
    const required = target.required || [];
    Object.keys(target.properties || {}).forEach(function (name) {
      const prop = target.properties[name];
      const resolved = resolve(doc, prop);
      const li = el("li");
      li.appendChild(el("span", "prop", name));
      li.appendChild(document.createTextNode(" "));
      li.appendChild(el("span", "type", typeName(doc, prop)));
      if (required.indexOf(name) >= 0) { li.appendChild(document.createTextNode(" ")); li.appendChild(el("span", "req", "required")); }
      const notes = constraints(prop);
      if (notes.length) { li.appendChild(document.createTextNode(" ")); li.appendChild(el("span", "constraint", notes.join("; "))); }
      const description = prop.description || resolved.description;
      if (description) { li.appendChild(document.createTextNode(" — ")); li.appendChild(inline(description)); }
      const sub = schemaTree(doc, prop, depth + 1, opened);
      if (sub.childNodes.length) li.appendChild(sub);
      list.appendChild(li);
    });
    if (target.additionalProperties && typeof target.additionalProperties === "object" && !target.properties) {
      const li = el("li");
      li.appendChild(el("span", "constraint", "each value: "));
      li.appendChild(el("span", "type", typeName(doc, target.additionalProperties)));
      const sub = schemaTree(doc, target.additionalProperties, depth + 1, opened);
      if (sub.childNodes.length) li.appendChild(sub);
      list.appendChild(li);
    }
    return list;
  }

  // A media type and its schema; `expand` opens the schema's tree (error bodies are all the
  // same ErrorBody: a link to it says enough).
  function content(doc, holder, into, expand) {
    Object.keys((holder && holder.content) || {}).forEach(function (media) {
      const schema = holder.content[media].schema;
      const line = el("div");
      line.appendChild(el("span", "media", media + " "));
      if (schema) {
        if (schema.$ref) {
          const link = el("a", "type", typeName(doc, schema));
          link.href = "#schema-" + refName(schema.$ref).replace(/[^A-Za-z0-9_-]/g, "-");
          line.appendChild(link);
        } else {
          line.appendChild(el("span", "type", typeName(doc, schema)));
        }
        const notes = constraints(resolve(doc, schema));
        if (notes.length) { line.appendChild(document.createTextNode(" ")); line.appendChild(el("span", "constraint", notes.join("; "))); }
      }
      into.appendChild(line);
      if (schema && expand !== false) {
        const tree = schemaTree(doc, schema, 0, []);
        if (tree.childNodes.length) into.appendChild(tree);
      }
    });
  }

  function authLabel(doc, op) {
    const security = op.security !== undefined ? op.security : doc.security;
    if (!security || security.length === 0) return "public";
    const names = [];
    security.forEach(function (req) {
      const keys = Object.keys(req);
      if (keys.length === 0) names.push("optional");
      keys.forEach(function (k) { if (names.indexOf(k) < 0) names.push(k); });
    });
    return "auth: " + names.join(", ");
  }

  function operation(doc, path, method, op, pathParams) {
    const id = "op-" + (op.operationId || (method + path)).replace(/[^A-Za-z0-9_-]/g, "-");
    const box = el("article", "op");
    box.id = id;
    box.dataset.search = [method, path, op.summary || "", op.operationId || "", (op.tags || []).join(" ")].join(" ").toLowerCase();
    const head = el("div", "op-head");
    head.appendChild(el("span", "method " + method, method));
    head.appendChild(el("span", "path", path));
    head.appendChild(el("span", "auth", authLabel(doc, op)));
    box.appendChild(head);
    if (op.summary) box.appendChild(el("div", "summary", op.summary));
    if (op.description) box.appendChild(prose(op.description));
    if (op.deprecated) box.appendChild(el("p", "req", "Deprecated."));

    const params = (pathParams || []).concat(op.parameters || []).map(function (p) { return resolve(doc, p); });
    if (params.length) {
      box.appendChild(el("h3", null, "Parameters"));
      const table = el("table");
      const header = el("tr");
      ["name", "in", "type", "description"].forEach(function (h) { header.appendChild(el("th", null, h)); });
      table.appendChild(header);
      params.forEach(function (p) {
        const row = el("tr");
        const name = el("td");
        name.appendChild(el("span", "prop", p.name));
        if (p.required) { name.appendChild(document.createTextNode(" ")); name.appendChild(el("span", "req", "required")); }
        row.appendChild(name);
        row.appendChild(el("td", null, p.in));
        const type = el("td");
        type.appendChild(el("span", "type", typeName(doc, p.schema)));
        const notes = constraints(resolve(doc, p.schema));
        if (notes.length) { type.appendChild(document.createElement("br")); type.appendChild(el("span", "constraint", notes.join("; "))); }
        row.appendChild(type);
        const desc = el("td");
        if (p.description) desc.appendChild(inline(p.description));
        row.appendChild(desc);
        table.appendChild(row);
      });
      box.appendChild(table);
    }

    if (op.requestBody) {
      const body = resolve(doc, op.requestBody);
      box.appendChild(el("h3", null, "Request body" + (body.required ? " (required)" : "")));
      if (body.description) box.appendChild(prose(body.description));
      content(doc, body, box);
    }

    const responses = op.responses || {};
    const codes = Object.keys(responses);
    if (codes.length) {
      box.appendChild(el("h3", null, "Responses"));
      const table = el("table");
      codes.forEach(function (code) {
        const response = resolve(doc, responses[code]);
        const row = el("tr");
        const first = String(code).charAt(0);
        row.appendChild(el("td", "status-code " + (first === "2" || first === "1" || first === "3" ? "ok" : first === "4" ? "client" : "server"), code));
        const cell = el("td");
        if (response.description) cell.appendChild(inline(response.description));
        Object.keys(response.headers || {}).forEach(function (h) {
          cell.appendChild(el("div", "constraint", "header " + h));
        });
        content(doc, response, cell, first === "1" || first === "2" || first === "3");
        row.appendChild(cell);
        table.appendChild(row);
      });
      box.appendChild(table);
    }
    return box;
  }

  function render(doc) {
    const main = document.getElementById("content");
    const nav = document.getElementById("nav");
    main.textContent = "";
    const info = doc.info || {};
    document.getElementById("title").textContent = (info.title || "API") + " API";
    document.title = (info.title || "API") + " API";
    document.getElementById("version").textContent =
      "API version " + (info.version || "?") + " · OpenAPI " + (doc.openapi || "?");

    const intro = el("section", "intro");
    if (info.description) intro.appendChild(prose(info.description));
    const schemes = (doc.components && doc.components.securitySchemes) || {};
    const schemeNames = Object.keys(schemes);
    if (schemeNames.length) {
      intro.appendChild(el("h2", null, "Authentication"));
      schemeNames.forEach(function (name) {
        const s = schemes[name];
        const line = el("p");
        line.appendChild(el("span", "prop", name));
        let how = s.type;
        if (s.type === "http") how = "HTTP " + s.scheme + (s.bearerFormat ? " (" + s.bearerFormat + ")" : "") + ": Authorization: " + (s.scheme === "bearer" ? "Bearer <token>" : s.scheme);
        if (s.type === "apiKey") how = "API key in " + s.in + " " + s.name;
        line.appendChild(document.createTextNode(" — " + how));
        if (s.description) { line.appendChild(document.createTextNode(". ")); line.appendChild(inline(s.description)); }
        intro.appendChild(line);
      });
      intro.appendChild(el("p", "constraint", "Each operation below says which scheme it takes, or \"public\"."));
    }
    main.appendChild(intro);

    // Operations grouped by their first tag, tags in the document's order, then the rest.
    const groups = {};
    const order = (doc.tags || []).map(function (t) { return t.name; });
    const tagDescriptions = {};
    (doc.tags || []).forEach(function (t) { tagDescriptions[t.name] = t.description; });
    Object.keys(doc.paths || {}).forEach(function (path) {
      const item = doc.paths[path] || {};
      METHODS.forEach(function (method) {
        const op = item[method];
        if (!op) return;
        const tag = (op.tags && op.tags[0]) || "other";
        if (!groups[tag]) { groups[tag] = []; if (order.indexOf(tag) < 0) order.push(tag); }
        groups[tag].push({ path: path, method: method, op: op, params: item.parameters });
      });
    });
    let count = 0;
    order.forEach(function (tag) {
      const ops = groups[tag];
      if (!ops) return;
      const section = el("section", "tag");
      section.id = "tag-" + tag.replace(/[^A-Za-z0-9_-]/g, "-");
      section.appendChild(el("h2", null, tag));
      if (tagDescriptions[tag]) section.appendChild(prose(tagDescriptions[tag]));
      nav.appendChild(el("h2", null, tag));
      const list = el("ul");
      ops.forEach(function (entry) {
        const box = operation(doc, entry.path, entry.method, entry.op, entry.params);
        section.appendChild(box);
        const li = el("li");
        li.dataset.target = box.id;
        const link = el("a", null, entry.method.toUpperCase() + " " + entry.path);
        link.href = "#" + box.id;
        link.title = entry.op.summary || "";
        li.appendChild(link);
        list.appendChild(li);
        count += 1;
      });
      nav.appendChild(list);
      main.appendChild(section);
    });
    main.dataset.operations = String(count);

    const schemas = (doc.components && doc.components.schemas) || {};
    const names = Object.keys(schemas).sort();
    if (names.length) {
      const section = el("section", "tag");
      section.id = "schemas";
      section.appendChild(el("h2", null, "Schemas"));
      names.forEach(function (name) {
        const box = el("article", "op");
        box.id = "schema-" + name.replace(/[^A-Za-z0-9_-]/g, "-");
        const head = el("div", "op-head");
        head.appendChild(el("span", "path", name));
        head.appendChild(el("span", "type", typeName(doc, schemas[name])));
        box.appendChild(head);
        if (schemas[name].description) box.appendChild(prose(schemas[name].description));
        const notes = constraints(schemas[name]);
        if (notes.length) box.appendChild(el("div", "constraint", notes.join("; ")));
        box.appendChild(schemaTree(doc, { $ref: "#/components/schemas/" + name }, 0, []));
        section.appendChild(box);
      });
      main.appendChild(section);
      nav.appendChild(el("h2", null, "schemas"));
      const list = el("ul");
      const li = el("li");
      const link = el("a", null, names.length + " schemas");
      link.href = "#schemas";
      li.appendChild(link);
      list.appendChild(li);
      nav.appendChild(list);
    }
    if (location.hash) {
      const target = document.getElementById(location.hash.slice(1));
      if (target) target.scrollIntoView();
    }
  }

  function filter(text) {
    const needle = text.trim().toLowerCase();
    document.querySelectorAll("article.op[data-search]").forEach(function (box) {
      box.classList.toggle("hidden", needle !== "" && box.dataset.search.indexOf(needle) < 0);
    });
    document.querySelectorAll("nav li[data-target]").forEach(function (li) {
      const box = document.getElementById(li.dataset.target);
      li.classList.toggle("hidden", !!box && box.classList.contains("hidden"));
    });
  }

  function start() {
    document.getElementById("filter").addEventListener("input", function (event) {
      filter(event.target.value);
    });
    fetch("/openapi.json", { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("GET /openapi.json answered " + response.status);
        return response.json();
      })
      .then(render)
      .catch(function (error) {
        const status = document.getElementById("status") || el("p");
        status.className = "status error";
        status.textContent = "Could not render the API document: " + error.message;
        document.getElementById("content").appendChild(status);
      });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
