// Small DOM helpers the page's modules share, and the banner that reports what went wrong.

export const $ = (id) => document.getElementById(id);

/** Say what went wrong (as a sentence: the server's messages start lowercase); with
 * `retry`, the banner offers a Retry button that calls it. */
export function showBanner(text, retry = null) {
  $("banner-text").textContent = text.charAt(0).toUpperCase() + text.slice(1);
  $("banner-retry").hidden = !retry;
  $("banner-retry").onclick = retry && (() => { hideBanner(); retry(); });
  $("banner").hidden = false;
}

export function hideBanner() {
  $("banner").hidden = true;
}

export function button(text, className, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = text;
  b.addEventListener("click", onClick);
  return b;
}

export function actions(...buttons) {
  const bar = document.createElement("div");
  bar.className = "actions";
  bar.append(...buttons);
  return bar;
}

export function download(name, type, text) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], { type }));
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}

$("banner-close").addEventListener("click", hideBanner);
