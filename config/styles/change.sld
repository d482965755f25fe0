<?xml version="1.0" encoding="UTF-8"?>
<!-- aquamask water change style (for GeoServer): uint8 classes of a water-change COG,
     0 dry at both dates, 1 water gained, 2 water lost, 3 permanent water, 255 no data at either
     date. The same colours as the MapServer mapfile (config/mapfile.j2, CHANGE_CLASSES in
     processes/publishers/mapserver.py). -->
<StyledLayerDescriptor version="1.0.0"
    xmlns="http://www.opengis.net/sld"
    xmlns:ogc="http://www.opengis.net/ogc"
    xmlns:xlink="http://www.w3.org/1999/xlink"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xsi:schemaLocation="http://www.opengis.net/sld http://schemas.opengis.net/sld/1.0.0/StyledLayerDescriptor.xsd">
  <NamedLayer>
    <Name>water-change</Name>
    <UserStyle>
      <Name>water-change</Name>
      <Title>Water change</Title>
      <Abstract>Sky blue where water was gained, orange where it was lost (colours told apart
        with any colour vision), blue where it stayed, sand where both dates were dry, grey
        where either date had no valid data.</Abstract>
      <IsDefault>1</IsDefault>
      <FeatureTypeStyle>
        <Rule>
          <Name>change</Name>
          <Title>Water change</Title>
          <RasterSymbolizer>
            <Opacity>1.0</Opacity>
            <ColorMap type="values">
              <ColorMapEntry color="#ede8d0" quantity="0" opacity="1" label="Dry at both dates"/>
              <ColorMapEntry color="#56b4e9" quantity="1" opacity="1" label="Water gained"/>
              <ColorMapEntry color="#e69f00" quantity="2" opacity="1" label="Water lost"/>
              <ColorMapEntry color="#0070ff" quantity="3" opacity="1" label="Permanent water"/>
              <ColorMapEntry color="#a0a0a0" quantity="255" opacity="1" label="No data at either date"/>
            </ColorMap>
          </RasterSymbolizer>
        </Rule>
      </FeatureTypeStyle>
    </UserStyle>
  </NamedLayer>
</StyledLayerDescriptor>
