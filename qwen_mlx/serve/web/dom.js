// Small DOM helpers the page's modules share, and the banner that reports what went wrong.

export const $ = (id) => document.getElementById(id);

export function showBanner(text) {
  $("banner-text").textContent = text;
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
