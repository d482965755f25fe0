<?xml version="1.0" encoding="UTF-8"?>
<!-- aquamask water mask style (for GeoServer): uint8 classes 0 dry, 1 water, 255 no data.
     Water is drawn blue (#0070ff, the same blue as the MapServer mapfile, config/mapfile.j2);
     dry land and no data are transparent. -->
<StyledLayerDescriptor version="1.0.0"
    xmlns="http://www.opengis.net/sld"
    xmlns:ogc="http://www.opengis.net/ogc"
    xmlns:xlink="http://www.w3.org/1999/xlink"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xsi:schemaLocation="http://www.opengis.net/sld http://schemas.opengis.net/sld/1.0.0/StyledLayerDescriptor.xsd">
  <NamedLayer>
    <Name>water</Name>
    <UserStyle>
      <Name>water</Name>
      <Title>Water mask</Title>
      <Abstract>Blue where water was detected; dry land and no data transparent.</Abstract>
      <IsDefault>1</IsDefault>
      <FeatureTypeStyle>
        <Rule>
          <Name>water</Name>
          <Title>Water</Title>
          <RasterSymbolizer>
            <Opacity>1.0</Opacity>
            <ColorMap type="values">
              <ColorMapEntry color="#000000" quantity="0" opacity="0" label="Dry"/>
              <ColorMapEntry color="#0070ff" quantity="1" opacity="1" label="Water"/>
              <ColorMapEntry color="#000000" quantity="255" opacity="0" label="No data"/>
            </ColorMap>
          </RasterSymbolizer>
        </Rule>
      </FeatureTypeStyle>
    </UserStyle>
  </NamedLayer>
</StyledLayerDescriptor>
