// pygeoapi's job and results pages: show the JSON the page carries in a data block (pygeoapi
// wrote it into an inline script; a data block is not run, and its text is escaped)
for (const block of document.querySelectorAll("script[type='application/json'][data-into]")) {
  const target = document.getElementById(block.dataset.into);
  if (!target) continue;
  let value = JSON.parse(block.textContent);
  if (typeof value === "string") value = JSON.parse(value);  // job parameters: JSON in a string
  target.textContent = JSON.stringify(value, undefined, 2);
}
